//! `lookout-loadtest`: the `lookout-load` generator. It only talks to the
//! systems it measures over the network and never links their code.
