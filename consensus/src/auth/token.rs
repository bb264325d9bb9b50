//! Auth tokens, as etcd's `--auth-token` makes them:
//!
//! - `simple`: `"<16 random letters>.<raft log index>"`. Authenticate is a
//!   raft entry, so every member records the token for the user when it
//!   applies that entry; a token lives in memory only, for `--auth-token-ttl`
//!   after its last use, and dies with the user's deletion, a password
//!   change, auth disable or a restart (all as in etcd).
//! - `jwt,sign-method=RS256,priv-key=...,pub-key=...,ttl=5m`: a JWT with
//!   claims `username`, `revision` and `exp`, byte for byte what etcd's
//!   golang-jwt writes, so a token verifies on any member (or gateway) that
//!   has the key. Signed and verified with ring: RS256/384/512,
//!   PS256/384/512, ES256/384 and HS256/384/512 (ring has no P-521, so
//!   etcd's ES512 is refused at start).
//!
//! Simple tokens are found by their SHA-256 digest, never by comparing
//! token text; JWT signatures are checked by ring (HMAC in constant time).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{self, KeyPair};
use rustls_pki_types::pem::{PemObject, SectionKind};
use sha2::{Digest, Sha256};

/// etcd's default `--auth-token-ttl` and JWT `ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Length of a simple token's random prefix (etcd's).
const SIMPLE_PREFIX_LEN: usize = 16;
/// How often expired simple tokens are swept out of memory.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What a store member is told about auth at start (etcd's flags).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `--auth-token`.
    pub token: TokenKind,
    /// `--auth-token-ttl` (simple tokens).
    pub simple_ttl: Duration,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: a verified client certificate's common name
    /// is the user when a request carries no token.
    pub client_cert_auth: bool,
    /// A token naming the root user to this member only: `lookout dev`
    /// hands one (random, per start, never written anywhere) to the gateway
    /// it runs in the same process, so that gateway can list, watch and
    /// read the auth state whatever users a developer sets up.
    pub gateway_token: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token: TokenKind::Simple,
            simple_ttl: DEFAULT_TTL,
            bcrypt_cost: super::password::DEFAULT_COST,
            client_cert_auth: false,
            gateway_token: None,
        }
    }
}

/// `--auth-token`'s kind.
#[derive(Debug, Clone)]
pub enum TokenKind {
    Simple,
    Jwt(Box<JwtConfig>),
}

/// What a verified JWT says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    pub user: String,
    /// The auth revision the token was issued at.
    pub revision: u64,
    /// `exp`, when the token has one.
    pub expires: Option<SystemTime>,
}

/// A JWT key set, loaded and checked at start.
#[derive(Clone)]
pub struct JwtConfig {
    alg: Alg,
    /// `None`: only a public key was given (verify only, as etcd).
    signer: Option<std::sync::Arc<Signer>>,
    verifier: Verifier,
    pub ttl: Duration,
    /// Digests of tokens whose signature this key already verified. An
    /// RSA or ECDSA check costs tens of microseconds, and the same token
    /// comes back on every call of a client (a gateway's own token on
    /// every revision probe); the claims (expiry included) are still
    /// checked on each use. Shared by clones; emptied when full.
    verified: std::sync::Arc<parking_lot::Mutex<std::collections::HashSet<[u8; 32]>>>,
}

/// How many verified token digests a key keeps before it starts over.
const VERIFIED_CAP: usize = 4096;

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("alg", &self.alg.name())
            .field("can_sign", &self.signer.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Hs(u16),
    Rs(u16),
    Ps(u16),
    Es(u16),
}

impl Alg {
    fn parse(s: &str) -> Option<Self> {
        let bits = match s.get(2..)? {
            "256" => 256,
            "384" => 384,
            "512" => 512,
            _ => return None,
        };
        match s.get(..2)? {
            "HS" => Some(Alg::Hs(bits)),
            "RS" => Some(Alg::Rs(bits)),
            "PS" => Some(Alg::Ps(bits)),
            "ES" => Some(Alg::Es(bits)),
            _ => None,
        }
    }

    fn name(self) -> String {
        match self {
            Alg::Hs(b) => format!("HS{b}"),
            Alg::Rs(b) => format!("RS{b}"),
            Alg::Ps(b) => format!("PS{b}"),
            Alg::Es(b) => format!("ES{b}"),
        }
    }
}

enum Signer {
    Hmac(ring::hmac::Key),
    Rsa(signature::RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ecdsa(signature::EcdsaKeyPair),
}

#[derive(Clone)]
enum Verifier {
    Hmac(ring::hmac::Key),
    Public(&'static dyn signature::VerificationAlgorithm, Vec<u8>),
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(PathBuf::from(path)).map_err(|e| format!("read {path}: {e}"))
}

/// The private key DER of a PEM file: (kind, der).
fn private_pem(pem: &[u8]) -> Result<(SectionKind, Vec<u8>), String> {
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|e| format!("bad PEM: {e}"))?;
        if matches!(
            kind,
            SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey
        ) {
            return Ok((kind, der));
        }
    }
    Err("no private key in the file".into())
}

/// The key bytes ring verifies with, from a PEM `PUBLIC KEY` (the
/// subjectPublicKey BIT STRING of the SubjectPublicKeyInfo).
fn public_pem(pem: &[u8]) -> Result<Vec<u8>, String> {
    let spki = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem)
        .map_err(|e| format!("no PUBLIC KEY in the file: {e}"))?;
    let der = crate::tls::der_tlv;
    let (_, body, _) = der(spki.as_ref()).ok_or("bad public key")?;
    let (_, _alg, rest) = der(body).ok_or("bad public key")?;
    let (tag, bits, _) = der(rest).ok_or("bad public key")?;
    if tag != 0x03 || bits.first() != Some(&0) {
        return Err("bad public key bit string".into());
    }
    Ok(bits[1..].to_vec())
}

/// SEC1 `EC PRIVATE KEY` -> (private scalar, public point).
fn sec1_parts(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let tlv = crate::tls::der_tlv;
    let (_, mut body, _) = tlv(der).ok_or("bad EC key")?;
    let (_, _version, rest) = tlv(body).ok_or("bad EC key")?;
    body = rest;
    let (tag, scalar, rest) = tlv(body).ok_or("bad EC key")?;
    if tag != 0x04 {
        return Err("bad EC private key".into());
    }
    let mut rest = rest;
    while !rest.is_empty() {
        let (tag, v, r) = tlv(rest).ok_or("bad EC key")?;
        if tag == 0xa1 {
            let (bt, bits, _) = tlv(v).ok_or("bad EC key")?;
            if bt == 0x03 && bits.first() == Some(&0) {
                return Ok((scalar.to_vec(), bits[1..].to_vec()));
            }
        }
        rest = r;
    }
    Err("EC private key without its public key".into())
}

impl JwtConfig {
    /// etcd's JWT options: `sign-method` (required), `priv-key` and/or
    /// `pub-key` (PEM files; an HMAC method takes its secret from
    /// `priv-key`), `ttl` (Go duration, default 5m).
    ///
    /// # Errors
    /// A missing or unknown method, unreadable or mismatched keys.
    pub fn from_options(opts: &HashMap<String, String>) -> Result<Self, String> {
        let method = opts.get("sign-method").map(String::as_str).unwrap_or("");
        let alg = Alg::parse(method)
            .ok_or_else(|| format!("auth: invalid auth signature method {method:?}"))?;
        let ttl = match opts.get("ttl") {
            Some(t) if !t.is_empty() => parse_go_duration(t)?,
            _ => DEFAULT_TTL,
        };
        let priv_pem = opts
            .get("priv-key")
            .filter(|p| !p.is_empty())
            .map(|p| read(p))
            .transpose()?;
        let pub_pem = opts
            .get("pub-key")
            .filter(|p| !p.is_empty())
            .map(|p| read(p))
            .transpose()?;
        let rng = ring::rand::SystemRandom::new();
        let (signer, derived_pub): (Option<Signer>, Option<Vec<u8>>) = match (alg, &priv_pem) {
            (Alg::Hs(bits), Some(secret)) => {
                let k = ring::hmac::Key::new(hmac_alg(bits), secret);
                (Some(Signer::Hmac(k)), None)
            }
            (Alg::Hs(_), None) => return Err("auth: missing key data (HMAC needs priv-key)".into()),
            (Alg::Rs(bits) | Alg::Ps(bits), Some(pem)) => {
                let (kind, der) = private_pem(pem)?;
                let kp = match kind {
                    SectionKind::RsaPrivateKey => signature::RsaKeyPair::from_der(&der),
                    _ => signature::RsaKeyPair::from_pkcs8(&der),
                }
                .map_err(|e| format!("bad RSA private key: {e}"))?;
                let public = kp.public_key().as_ref().to_vec();
                let enc = rsa_encoding(alg, bits);
                (Some(Signer::Rsa(kp, enc)), Some(public))
            }
            (Alg::Es(bits), Some(pem)) => {
                let (kind, der) = private_pem(pem)?;
                let a = ecdsa_signing(bits)?;
                let kp = match kind {
                    SectionKind::EcPrivateKey => {
                        let (scalar, point) = sec1_parts(&der)?;
                        signature::EcdsaKeyPair::from_private_key_and_public_key(
                            a, &scalar, &point, &rng,
                        )
                    }
                    _ => signature::EcdsaKeyPair::from_pkcs8(a, &der, &rng),
                }
                .map_err(|e| format!("bad EC private key: {e}"))?;
                let public = kp.public_key().as_ref().to_vec();
                (Some(Signer::Ecdsa(kp)), Some(public))
            }
            (_, None) => (None, None),
        };
        let verifier = match (alg, &signer) {
            (Alg::Hs(_), Some(Signer::Hmac(k))) => Verifier::Hmac(k.clone()),
            _ => {
                let public = match (&pub_pem, derived_pub) {
                    (Some(p), derived) => {
                        let given = public_pem(p)?;
                        if derived.is_some_and(|d| d != given) {
                            return Err("auth: public and private keys don't match".into());
                        }
                        given
                    }
                    (None, Some(d)) => d,
                    (None, None) => return Err("auth: missing key data".into()),
                };
                Verifier::Public(verify_alg(alg)?, public)
            }
        };
        Ok(Self {
            alg,
            signer: signer.map(std::sync::Arc::new),
            verifier,
            ttl,
            verified: Default::default(),
        })
    }

    /// A signed token for `user` at auth `revision`, expiring `ttl` from now.
    ///
    /// # Errors
    /// Only a public key was configured (etcd's "token signing attempted
    /// with verify-only key"), or the signature failed.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let Some(s) = &self.signer else {
            return Err("auth: token signing attempted with verify-only key".into());
        };
        let exp = SystemTime::now()
            .checked_add(self.ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(i64::MAX, |d| d.as_secs() as i64);
        // golang-jwt marshals a map: keys sorted.
        let header = format!("{{\"alg\":\"{}\",\"typ\":\"JWT\"}}", self.alg.name());
        let claims = serde_json::json!({"exp": exp, "revision": revision, "username": user});
        let mut msg = B64.encode(header);
        msg.push('.');
        msg.push_str(&B64.encode(claims.to_string()));
        let sig = match s.as_ref() {
            Signer::Hmac(k) => ring::hmac::sign(k, msg.as_bytes()).as_ref().to_vec(),
            Signer::Rsa(kp, enc) => {
                let mut sig = vec![0; kp.public().modulus_len()];
                kp.sign(
                    *enc,
                    &ring::rand::SystemRandom::new(),
                    msg.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| format!("JWT signature: {e}"))?;
                sig
            }
            Signer::Ecdsa(kp) => kp
                .sign(&ring::rand::SystemRandom::new(), msg.as_bytes())
                .map_err(|e| format!("JWT signature: {e}"))?
                .as_ref()
                .to_vec(),
        };
        msg.push('.');
        msg.push_str(&B64.encode(sig));
        Ok(msg)
    }

    /// The user and auth revision of a valid token: signed with our key
    /// and method, not expired, and carrying both claims.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        self.claims(token).map(|c| (c.user, c.revision))
    }

    /// [`JwtConfig::verify`] with the expiry too (a gateway keeps a
    /// verified token until then).
    pub fn claims(&self, token: &str) -> Option<JwtClaims> {
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: serde_json::Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header.get("alg")?.as_str()? != self.alg.name() {
            return None;
        }
        let seen = digest(token);
        if !self.verified.lock().contains(&seen) {
            let sig = B64.decode(s).ok()?;
            let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
            let ok = match &self.verifier {
                Verifier::Hmac(k) => ring::hmac::verify(k, signed, &sig).is_ok(),
                Verifier::Public(alg, key) => signature::UnparsedPublicKey::new(*alg, key)
                    .verify(signed, &sig)
                    .is_ok(),
            };
            if !ok {
                return None;
            }
            let mut verified = self.verified.lock();
            if verified.len() >= VERIFIED_CAP {
                verified.clear();
            }
            verified.insert(seen);
        }
        let claims: serde_json::Value = serde_json::from_slice(&B64.decode(p).ok()?).ok()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        // golang-jwt: exp, iat and nbf are checked when present.
        if let Some(exp) = claims.get("exp")
            && now > exp.as_f64()?
        {
            return None;
        }
        for past in ["iat", "nbf"] {
            if let Some(t) = claims.get(past)
                && now < t.as_f64()?
            {
                return None;
            }
        }
        let user = claims.get("username")?.as_str()?.to_string();
        let rev = claims.get("revision")?;
        let revision = rev.as_u64().or_else(|| rev.as_f64().map(|f| f as u64))?;
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_f64)
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| UNIX_EPOCH + Duration::from_secs_f64(e.min(1e12)));
        Some(JwtClaims {
            user,
            revision,
            expires,
        })
    }
}

fn hmac_alg(bits: u16) -> ring::hmac::Algorithm {
    match bits {
        384 => ring::hmac::HMAC_SHA384,
        512 => ring::hmac::HMAC_SHA512,
        _ => ring::hmac::HMAC_SHA256,
    }
}

fn rsa_encoding(alg: Alg, bits: u16) -> &'static dyn signature::RsaEncoding {
    match (alg, bits) {
        (Alg::Ps(_), 384) => &signature::RSA_PSS_SHA384,
        (Alg::Ps(_), 512) => &signature::RSA_PSS_SHA512,
        (Alg::Ps(_), _) => &signature::RSA_PSS_SHA256,
        (_, 384) => &signature::RSA_PKCS1_SHA384,
        (_, 512) => &signature::RSA_PKCS1_SHA512,
        _ => &signature::RSA_PKCS1_SHA256,
    }
}

fn ecdsa_signing(bits: u16) -> Result<&'static signature::EcdsaSigningAlgorithm, String> {
    match bits {
        256 => Ok(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        384 => Ok(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => Err("ES512 is not supported (no P-521 in ring)".into()),
    }
}

fn verify_alg(alg: Alg) -> Result<&'static dyn signature::VerificationAlgorithm, String> {
    Ok(match alg {
        Alg::Rs(384) => &signature::RSA_PKCS1_2048_8192_SHA384,
        Alg::Rs(512) => &signature::RSA_PKCS1_2048_8192_SHA512,
        Alg::Rs(_) => &signature::RSA_PKCS1_2048_8192_SHA256,
        Alg::Ps(384) => &signature::RSA_PSS_2048_8192_SHA384,
        Alg::Ps(512) => &signature::RSA_PSS_2048_8192_SHA512,
        Alg::Ps(_) => &signature::RSA_PSS_2048_8192_SHA256,
        Alg::Es(256) => &signature::ECDSA_P256_SHA256_FIXED,
        Alg::Es(384) => &signature::ECDSA_P384_SHA384_FIXED,
        Alg::Es(_) => return Err("ES512 is not supported (no P-521 in ring)".into()),
        Alg::Hs(_) => return Err("HMAC verifies with its secret".into()),
    })
}

/// Go's `time.ParseDuration` for what etcd's options use: a sequence of
/// numbers with units ns, us, ms, s, m, h ("5m", "1h30m", "1.5s").
///
/// # Errors
/// Anything else.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?}");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let num: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += num * unit;
        rest = &rest[u..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// Parses `--auth-token` (etcd's `decomposeOpts`): the kind, then
/// `key=value` options; an option given twice is an error.
///
/// # Errors
/// etcd's "invalid auth options" cases, an unknown kind, bad JWT keys.
pub fn parse_auth_token(s: &str) -> Result<TokenKind, String> {
    let mut parts = s.split(',');
    let kind = parts.next().unwrap_or("").trim();
    let mut opts = HashMap::new();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .filter(|(_, v)| !v.contains('='))
            .ok_or_else(|| format!("auth: invalid auth options {s:?}"))?;
        if opts.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!(
                "auth: invalid auth options {s:?} ({k} given twice)"
            ));
        }
    }
    match kind {
        "simple" => Ok(TokenKind::Simple),
        "jwt" => {
            for k in opts.keys() {
                if !["sign-method", "pub-key", "priv-key", "ttl"].contains(&k.as_str()) {
                    tracing::warn!(option = %k, "unknown JWT option");
                }
            }
            JwtConfig::from_options(&opts).map(|j| TokenKind::Jwt(Box::new(j)))
        }
        other => Err(format!(
            "auth: unknown token type {other:?} (simple or jwt)"
        )),
    }
}

// === the running token table ===

#[derive(Debug)]
struct SimpleEntry {
    user: String,
    expires: Instant,
}

#[derive(Debug)]
struct SimpleTable {
    /// SHA-256 of the token -> its user: lookups compare digests only.
    by_digest: HashMap<[u8; 32], SimpleEntry>,
    last_sweep: Instant,
}

/// One member's token provider (see the module doc).
#[derive(Debug)]
pub(crate) struct Tokens {
    pub cfg: AuthConfig,
    // A std Mutex: map operations only, never held across an await.
    simple: parking_lot::Mutex<SimpleTable>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    pub fn new(cfg: AuthConfig) -> Self {
        Self {
            cfg,
            simple: parking_lot::Mutex::new(SimpleTable {
                by_digest: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Whether `token` is the in-process gateway's (compared in constant
    /// time, as digests).
    pub fn is_gateway_token(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.cfg
            .gateway_token
            .as_deref()
            .is_some_and(|g| bool::from(digest(g).ct_eq(&digest(token))))
    }

    pub fn jwt(&self) -> Option<&JwtConfig> {
        match &self.cfg.token {
            TokenKind::Jwt(j) => Some(j),
            TokenKind::Simple => None,
        }
    }

    /// A simple token's lifetime after its last use.
    pub fn ttl(&self) -> Duration {
        if self.cfg.simple_ttl.is_zero() {
            DEFAULT_TTL
        } else {
            self.cfg.simple_ttl
        }
    }

    /// A fresh [`AuthConfig::gateway_token`]: 48 random letters.
    pub fn new_gateway_token() -> String {
        use rand::Rng;
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut rng = rand::rng();
        (0..48)
            .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
            .collect()
    }

    /// A simple token's random prefix (16 letters, as etcd's).
    pub fn new_prefix() -> String {
        use rand::Rng;
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut rng = rand::rng();
        (0..SIMPLE_PREFIX_LEN)
            .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
            .collect()
    }

    /// The log index a simple token was issued at, if it is shaped like
    /// one (`prefix.index`).
    pub fn simple_index(token: &str) -> Option<u64> {
        let (_, idx) = token.split_once('.')?;
        if idx.contains('.') {
            return None;
        }
        idx.parse().ok()
    }

    /// Records a token issued by an applied Authenticate (every member).
    pub fn register(&self, token: &str, user: &str) {
        let now = Instant::now();
        let mut t = self.simple.lock();
        t.by_digest.insert(
            digest(token),
            SimpleEntry {
                user: user.to_string(),
                expires: now + self.ttl(),
            },
        );
        if now.duration_since(t.last_sweep) >= SWEEP_EVERY {
            t.by_digest.retain(|_, e| e.expires > now);
            t.last_sweep = now;
        }
    }

    /// The user of a live simple token; each use extends its life by the
    /// TTL, as etcd's keeper does.
    pub fn simple_user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let ttl = self.ttl();
        let mut t = self.simple.lock();
        let key = digest(token);
        match t.by_digest.get_mut(&key) {
            Some(e) if e.expires > now => {
                e.expires = now + ttl;
                Some(e.user.clone())
            }
            Some(_) => {
                t.by_digest.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Drops every simple token of `user` (deleted, or a new password).
    pub fn revoke_user(&self, user: &str) {
        self.simple.lock().by_digest.retain(|_, e| e.user != user);
    }

    /// Drops every simple token (auth disabled).
    pub fn clear(&self) {
        self.simple.lock().by_digest.clear();
    }

    /// Applies what a published request did to the tokens.
    pub fn on_event(&self, ev: TokenEvent) {
        match ev {
            TokenEvent::Issued { token, user } => self.register(&token, &user),
            TokenEvent::UserRevoked(user) => self.revoke_user(&user),
            TokenEvent::Cleared => self.clear(),
        }
    }
}

/// What an applied request does to this member's simple tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenEvent {
    Issued { token: String, user: String },
    UserRevoked(String),
    Cleared,
}

/// The token change `req` made, given how it applied.
pub(crate) fn token_event(
    req: &crate::mvcc::request::Request,
    resp: &crate::error::Result<crate::mvcc::request::Response>,
) -> Option<TokenEvent> {
    use crate::mvcc::request::{Request, Response};
    let (Request::Auth(a), Ok(Response::Auth { token })) = (req.inner(), resp) else {
        return None;
    };
    match a {
        super::AuthRequest::Authenticate { name, .. } => Some(TokenEvent::Issued {
            token: token.clone(),
            user: name.clone(),
        }),
        super::AuthRequest::UserDelete { name }
        | super::AuthRequest::UserChangePassword { name, .. } => {
            Some(TokenEvent::UserRevoked(name.clone()))
        }
        super::AuthRequest::Disable => Some(TokenEvent::Cleared),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_like_etcd() {
        assert!(matches!(parse_auth_token("simple"), Ok(TokenKind::Simple)));
        assert!(parse_auth_token("nope").is_err());
        assert!(parse_auth_token("jwt,sign-method").is_err());
        assert!(parse_auth_token("jwt,ttl=1m,ttl=2m").is_err());
        assert!(parse_auth_token("jwt,sign-method=XX256,priv-key=/x").is_err());
        assert_eq!(parse_go_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_go_duration("10").is_err());
        assert_eq!(Tokens::simple_index("abc.17"), Some(17));
        assert_eq!(Tokens::simple_index("a.b.c"), None);
        assert_eq!(Tokens::simple_index("abc"), None);
        assert_eq!(Tokens::new_prefix().len(), 16);
    }

    #[test]
    fn hmac_tokens_round_trip_and_refuse_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, b"secret").unwrap();
        let opts: HashMap<String, String> = [
            ("sign-method".to_string(), "HS256".to_string()),
            ("priv-key".to_string(), key.display().to_string()),
        ]
        .into();
        let j = JwtConfig::from_options(&opts).unwrap();
        let t = j.sign("alice", 7).unwrap();
        assert_eq!(j.verify(&t), Some(("alice".to_string(), 7)));
        let mut bad = t.clone();
        bad.pop();
        bad.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(j.verify(&bad), None);
        // Verified once, the signature is remembered; the claims are not.
        assert_eq!(j.verify(&t), Some(("alice".to_string(), 7)));
        let mut expiring = j.clone();
        expiring.ttl = Duration::ZERO;
        let dead = expiring.sign("alice", 7).unwrap();
        assert_eq!(j.verify(&dead), None, "expired");
        assert!(j.verified.lock().contains(&digest(&dead)));
        assert_eq!(j.verify(&dead), None, "expired, signature remembered");
        std::fs::write(&key, b"other").unwrap();
        let other = JwtConfig::from_options(&opts).unwrap();
        assert_eq!(other.verify(&t), None, "signed by another key");
        assert_eq!(j.verify("a.b"), None);
        assert_eq!(j.verify("not a token"), None);
    }

    #[test]
    fn simple_tokens_slide_and_die_with_their_user() {
        let t = Tokens::new(AuthConfig {
            simple_ttl: Duration::from_secs(60),
            ..Default::default()
        });
        t.register("abc.5", "alice");
        t.register("def.6", "bob");
        assert_eq!(t.simple_user("abc.5").as_deref(), Some("alice"));
        assert_eq!(t.simple_user("abc.6"), None);
        t.revoke_user("alice");
        assert_eq!(t.simple_user("abc.5"), None);
        assert_eq!(t.simple_user("def.6").as_deref(), Some("bob"));
        t.clear();
        assert_eq!(t.simple_user("def.6"), None);
    }
}
