//! `lookout`: thin entry point; every subcommand lives in the library.

fn main() {
    eprintln!("usage: lookout <dev|store|gateway>");
    std::process::exit(2);
}
