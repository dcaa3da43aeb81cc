//! Secrets sealed at rest: the master key, envelope encryption of credential
//! fields, and rotation.
//!
//! Every secret gets its own random 256-bit data key, which encrypts the value
//! with AES-256-GCM; the data key is then wrapped (encrypted) under the master
//! key. Rotating the master key therefore only re-wraps the small data keys and
//! never touches the encrypted values. The value is bound to its record by
//! additional authenticated data (a caller-given context such as
//! `"integration:<id>:key"`), so a sealed value pasted into another record or
//! field does not open.
//!
//! Text form, versioned so the scheme can evolve:
//! `v1.<wrapped key>.<nonce>.<ciphertext>`, each part base64url without
//! padding. The wrapped key is the 12-byte wrapping nonce followed by the
//! 48-byte sealed data key (32 bytes + 16-byte tag).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use tollgate_core::secrets::{Secret, SecretSource};
use zeroize::Zeroizing;

/// Name of the key file `serve` creates in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
const VERSION: &str = "v1";
/// AAD of the data-key wrapping. Fixed (not the record's context) so that
/// rotation can re-wrap a data key without knowing which record it belongs to;
/// the record binding lives on the value's own encryption.
const WRAP_AAD: &[u8] = b"tollgate/v1/data-key";
/// Domain separation for the fingerprint, so it is never the hash of the bare
/// key that some other tool might also publish.
const FINGERPRINT_DOMAIN: &[u8] = b"tollgate/v1/master-key-fingerprint\0";

/// Why a secret or the master key could not be handled. No variant ever
/// carries key or plaintext material.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("master key must be exactly 64 hex characters (32 bytes), got {0} characters")]
    KeyLength(usize),
    #[error("master key must be hex (0-9, a-f)")]
    KeyNotHex,
    #[error(
        "master key file {path} can be accessed by group or others (mode {mode:03o}); \
         run `chmod 600 {path}` and start again"
    )]
    KeyFileTooOpen { path: PathBuf, mode: u32 },
    #[error("master key file {path}: {source}")]
    KeyFileIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the operating system's random number generator failed: {0}")]
    Random(rand::Error),
    #[error("malformed sealed secret: {0}")]
    Malformed(&'static str),
    #[error("sealed secret cannot be opened with this master key (wrong key, or the record is corrupt)")]
    WrongMasterKey,
    #[error("sealed secret does not belong to this record or has been tampered with")]
    ContextMismatch,
    #[error("encryption failed")]
    Encrypt,
    #[error("sealed secret is not valid UTF-8 text")]
    NotUtf8,
}

/// Where the master key came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The `TOLLGATE_MASTER_KEY` environment variable.
    Env,
    /// An existing key file.
    File(PathBuf),
    /// A key file created just now with a fresh random key.
    Created(PathBuf),
}

/// The 256-bit key that wraps every data key. Zeroed on drop; its `Debug`
/// shows only the fingerprint.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(fingerprint={})", self.fingerprint())
    }
}

impl MasterKey {
    /// Parses exactly 64 hex characters.
    pub fn from_hex(s: &str) -> Result<MasterKey, SecretError> {
        if s.len() != KEY_LEN * 2 {
            return Err(SecretError::KeyLength(s.chars().count()));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(s, bytes.as_mut_slice()).map_err(|_| SecretError::KeyNotHex)?;
        Ok(MasterKey(bytes))
    }

    /// A fresh random key from the operating system.
    pub fn generate() -> Result<MasterKey, SecretError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng
            .try_fill_bytes(bytes.as_mut_slice())
            .map_err(SecretError::Random)?;
        Ok(MasterKey(bytes))
    }

    /// The key as hex, in a buffer zeroed on drop.
    pub fn to_hex(&self) -> Secret<String> {
        Secret::new(hex::encode(self.0.as_slice()))
    }

    /// A short public identifier of the key (16 hex chars): the first 8 bytes of
    /// SHA-256 over a domain tag and the key. Stored beside sealed data so that
    /// a server started with the wrong key says so instead of failing later.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(FINGERPRINT_DOMAIN);
        h.update(self.0.as_slice());
        hex::encode(&h.finalize()[..8])
    }

    /// The master key to use: `env_hex` when given (the `TOLLGATE_MASTER_KEY`
    /// variable), else `DATA_DIR/master.key`, else a new random key written to
    /// that file with mode 0600. A key file that group or others can access is
    /// refused rather than silently used.
    pub fn load_or_create(data_dir: &Path, env_hex: Option<&str>) -> Result<(MasterKey, KeySource), SecretError> {
        if let Some(v) = env_hex {
            return Ok((MasterKey::from_hex(v.trim())?, KeySource::Env));
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        match MasterKey::read_file(&path) {
            Ok(key) => return Ok((key, KeySource::File(path))),
            Err(SecretError::KeyFileIo { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(data_dir).map_err(|source| SecretError::KeyFileIo {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let key = MasterKey::generate()?;
        match key.write_new(&path) {
            Ok(()) => Ok((key, KeySource::Created(path))),
            // Another process created it between our read and our create: use theirs.
            Err(SecretError::KeyFileIo { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((MasterKey::read_file(&path)?, KeySource::File(path)))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads a hex key file (a trailing newline is fine), refusing one that
    /// group or others can access.
    pub fn read_file(path: &Path) -> Result<MasterKey, SecretError> {
        let io = |source| SecretError::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        // Check the mode of the file actually opened, not of whatever the path
        // named a moment earlier.
        let mut f = std::fs::File::open(path).map_err(io)?;
        check_private(path, &f.metadata().map_err(io)?)?;
        // Room for the 65 bytes up front, so no reallocation leaves a copy behind.
        let mut text = Zeroizing::new(String::with_capacity(128));
        f.read_to_string(&mut text).map_err(io)?;
        MasterKey::from_hex(text.trim_end_matches(['\n', '\r']))
    }

    /// Writes the key to `path` atomically (for rotation): a temporary file
    /// with mode 0600 in the same directory, flushed to disk, then renamed over
    /// `path`, so a crash leaves either the old key or the new one, never half.
    pub fn write_to_file(&self, path: &Path) -> Result<(), SecretError> {
        let io = |source| SecretError::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut suffix = [0u8; 8];
        OsRng.try_fill_bytes(&mut suffix).map_err(SecretError::Random)?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp-{}", hex::encode(suffix)));
        let result = self
            .write_new(&tmp)
            .and_then(|()| std::fs::rename(&tmp, path).map_err(io));
        if result.is_err() {
            // Best effort: the temporary file holds key material.
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Creates `path` (which must not exist) with mode 0600 from the start and
    /// writes the hex key into it, flushed to disk.
    fn write_new(&self, path: &Path) -> Result<(), SecretError> {
        let io = |source| SecretError::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        f.write_all(self.to_hex().expose().as_bytes()).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.sync_all().map_err(io)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.0.as_slice()))
    }
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::KeyFileTooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), SecretError> {
    Ok(())
}

/// One sealed value: its wrapped data key and its encrypted bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// Wrapping nonce followed by the sealed data key.
    wrapped_key: [u8; WRAPPED_LEN],
    nonce: [u8; NONCE_LEN],
    /// The value's ciphertext with its GCM tag.
    ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ciphertext is not secret, but a debug dump of it is never useful.
        f.write_str("SealedSecret(..)")
    }
}

impl fmt::Display for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERSION}.{}.{}.{}",
            URL_SAFE_NO_PAD.encode(self.wrapped_key),
            URL_SAFE_NO_PAD.encode(self.nonce),
            URL_SAFE_NO_PAD.encode(&self.ciphertext)
        )
    }
}

impl FromStr for SealedSecret {
    type Err = SecretError;

    /// Strict: exactly four parts, known version, canonical base64url without
    /// padding, exact lengths.
    fn from_str(s: &str) -> Result<SealedSecret, SecretError> {
        let mut parts = s.split('.');
        let (Some(version), Some(wrapped), Some(nonce), Some(ct), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::Malformed("expected four dot-separated parts"));
        };
        if version != VERSION {
            return Err(SecretError::Malformed("unsupported version"));
        }
        let decode = |p: &str, what: &'static str| URL_SAFE_NO_PAD.decode(p).map_err(|_| SecretError::Malformed(what));
        let wrapped_key = decode(wrapped, "wrapped key is not base64url")?
            .try_into()
            .map_err(|_| SecretError::Malformed("wrapped key has the wrong length"))?;
        let nonce = decode(nonce, "nonce is not base64url")?
            .try_into()
            .map_err(|_| SecretError::Malformed("nonce has the wrong length"))?;
        let ciphertext = decode(ct, "ciphertext is not base64url")?;
        if ciphertext.len() < TAG_LEN {
            return Err(SecretError::Malformed("ciphertext is too short"));
        }
        Ok(SealedSecret {
            wrapped_key,
            nonce,
            ciphertext,
        })
    }
}

impl SealedSecret {
    /// Parses the text form (same as `str::parse`).
    pub fn parse(s: &str) -> Result<SealedSecret, SecretError> {
        s.parse()
    }

    /// Unwraps the data key with `master`.
    fn data_key(&self, master: &MasterKey) -> Result<Zeroizing<[u8; KEY_LEN]>, SecretError> {
        let (nonce, sealed) = self.wrapped_key.split_at(NONCE_LEN);
        let raw = Zeroizing::new(
            master
                .cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: WRAP_AAD,
                    },
                )
                .map_err(|_| SecretError::WrongMasterKey)?,
        );
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if raw.len() != KEY_LEN {
            return Err(SecretError::Malformed("data key has the wrong length"));
        }
        key.copy_from_slice(&raw);
        Ok(key)
    }
}

impl serde::Serialize for SealedSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SealedSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, SecretError> {
    let mut b = Zeroizing::new([0u8; N]);
    OsRng.try_fill_bytes(b.as_mut_slice()).map_err(SecretError::Random)?;
    Ok(b)
}

/// Wraps `data_key` under `master` with a fresh nonce.
fn wrap(master: &MasterKey, data_key: &[u8; KEY_LEN]) -> Result<[u8; WRAPPED_LEN], SecretError> {
    let nonce = random::<NONCE_LEN>()?;
    let sealed = master
        .cipher()
        .encrypt(
            Nonce::from_slice(nonce.as_slice()),
            Payload {
                msg: data_key,
                aad: WRAP_AAD,
            },
        )
        .map_err(|_| SecretError::Encrypt)?;
    let mut out = [0u8; WRAPPED_LEN];
    if sealed.len() != KEY_LEN + TAG_LEN {
        return Err(SecretError::Encrypt);
    }
    out[..NONCE_LEN].copy_from_slice(nonce.as_slice());
    out[NONCE_LEN..].copy_from_slice(&sealed);
    Ok(out)
}

/// Seals `plaintext` under a fresh data key wrapped by `master`, bound to
/// `aad` (the record and field it belongs to).
pub fn seal(master: &MasterKey, aad: &str, plaintext: &str) -> Result<SealedSecret, SecretError> {
    let data_key = random::<KEY_LEN>()?;
    let nonce = random::<NONCE_LEN>()?;
    let ciphertext = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key.as_slice()))
        .encrypt(
            Nonce::from_slice(nonce.as_slice()),
            Payload {
                msg: plaintext.as_bytes(),
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| SecretError::Encrypt)?;
    Ok(SealedSecret {
        wrapped_key: wrap(master, &data_key)?,
        nonce: *nonce,
        ciphertext,
    })
}

/// Opens a sealed value. Fails with [`SecretError::WrongMasterKey`] when the
/// data key does not unwrap, and [`SecretError::ContextMismatch`] when the
/// value was sealed for another `aad` or altered.
pub fn open(master: &MasterKey, aad: &str, sealed: &SealedSecret) -> Result<Secret<String>, SecretError> {
    let data_key = sealed.data_key(master)?;
    let bytes = Zeroizing::new(
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key.as_slice()))
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretError::ContextMismatch)?,
    );
    match std::str::from_utf8(&bytes) {
        Ok(s) => Ok(Secret::from(s)),
        Err(_) => Err(SecretError::NotUtf8),
    }
}

/// Re-wraps the data key of `sealed` from `old` to `new`. The value's nonce
/// and ciphertext are carried over byte for byte.
pub fn rewrap(old: &MasterKey, new: &MasterKey, sealed: &SealedSecret) -> Result<SealedSecret, SecretError> {
    let data_key = sealed.data_key(old)?;
    Ok(SealedSecret {
        wrapped_key: wrap(new, &data_key)?,
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext.clone(),
    })
}

/// The sealed secret fields of one record, opened one at a time on demand.
/// This is what the gateway hands a provider adapter, so a credential is
/// decrypted only when the upstream request is built. Field `name` is bound to
/// the AAD `"<context>:<name>"` (see [`SealedFields::aad`]).
#[derive(Clone)]
pub struct SealedFields {
    /// Shared so the server can swap in a new key after rotation.
    pub master: Arc<MasterKey>,
    /// The record, e.g. `"integration:<id>"`.
    pub context: String,
    pub fields: Vec<(String, SealedSecret)>,
}

impl fmt::Debug for SealedFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedFields")
            .field("context", &self.context)
            .field(
                "fields",
                &self.fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl SealedFields {
    /// The AAD a field of record `context` is sealed with.
    pub fn aad(context: &str, field: &str) -> String {
        format!("{context}:{field}")
    }

    /// Seals `values` (field name, plaintext) for record `context`.
    pub fn seal_all(
        master: Arc<MasterKey>,
        context: impl Into<String>,
        values: &[(&str, &str)],
    ) -> Result<SealedFields, SecretError> {
        let context = context.into();
        let fields = values
            .iter()
            .map(|(name, value)| {
                Ok((
                    name.to_string(),
                    seal(&master, &SealedFields::aad(&context, name), value)?,
                ))
            })
            .collect::<Result<Vec<_>, SecretError>>()?;
        Ok(SealedFields {
            master,
            context,
            fields,
        })
    }
}

impl SecretSource for SealedFields {
    fn open(&self, name: &str) -> Result<Option<Secret<String>>, String> {
        let Some((_, sealed)) = self.fields.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        open(&self.master, &SealedFields::aad(&self.context, name), sealed)
            .map(Some)
            .map_err(|e| format!("secret field `{name}` of {}: {e}", self.context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::generate().unwrap()
    }

    #[test]
    fn round_trip_through_text_form() {
        let m = key();
        let s = seal(&m, "integration:1:key", "sk-live-123").unwrap();
        let text = s.to_string();
        assert!(text.starts_with("v1."));
        let back: SealedSecret = text.parse().unwrap();
        assert_eq!(back, s);
        assert_eq!(open(&m, "integration:1:key", &back).unwrap().expose(), "sk-live-123");
        // Empty values seal too.
        let e = seal(&m, "a", "").unwrap();
        assert_eq!(open(&m, "a", &e).unwrap().expose(), "");
    }

    #[test]
    fn each_seal_uses_fresh_randomness() {
        let m = key();
        let a = seal(&m, "c", "same").unwrap();
        let b = seal(&m, "c", "same").unwrap();
        assert_ne!(a.to_string(), b.to_string());
    }

    #[test]
    fn wrong_master_key_fails() {
        let s = seal(&key(), "c", "secret").unwrap();
        assert!(matches!(open(&key(), "c", &s), Err(SecretError::WrongMasterKey)));
        assert!(matches!(rewrap(&key(), &key(), &s), Err(SecretError::WrongMasterKey)));
    }

    #[test]
    fn aad_mismatch_fails() {
        let m = key();
        let s = seal(&m, "integration:1:key", "secret").unwrap();
        assert!(matches!(
            open(&m, "integration:2:key", &s),
            Err(SecretError::ContextMismatch)
        ));
        assert!(matches!(
            open(&m, "integration:1:aws_secret_access_key", &s),
            Err(SecretError::ContextMismatch)
        ));
    }

    #[test]
    fn tampered_parts_fail() {
        let m = key();
        let s = seal(&m, "c", "secret value").unwrap();
        let mut t = s.clone();
        t.ciphertext[0] ^= 1;
        assert!(matches!(open(&m, "c", &t), Err(SecretError::ContextMismatch)));
        let mut t = s.clone();
        let last = t.ciphertext.len() - 1;
        t.ciphertext[last] ^= 0x80; // the tag
        assert!(matches!(open(&m, "c", &t), Err(SecretError::ContextMismatch)));
        let mut t = s.clone();
        t.nonce[0] ^= 1;
        assert!(matches!(open(&m, "c", &t), Err(SecretError::ContextMismatch)));
        let mut t = s.clone();
        t.wrapped_key[NONCE_LEN + 3] ^= 1;
        assert!(matches!(open(&m, "c", &t), Err(SecretError::WrongMasterKey)));
        let mut t = s;
        t.wrapped_key[0] ^= 1;
        assert!(matches!(open(&m, "c", &t), Err(SecretError::WrongMasterKey)));
    }

    #[test]
    fn invalid_utf8_plaintext_is_an_error() {
        // Only reachable with a forged record; build one by hand.
        let m = key();
        let dk = random::<KEY_LEN>().unwrap();
        let nonce = [7u8; NONCE_LEN];
        let ct = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(dk.as_slice()))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &[0xff, 0xfe],
                    aad: b"c",
                },
            )
            .unwrap();
        let s = SealedSecret {
            wrapped_key: wrap(&m, &dk).unwrap(),
            nonce,
            ciphertext: ct,
        };
        assert!(matches!(open(&m, "c", &s), Err(SecretError::NotUtf8)));
    }

    #[test]
    fn malformed_text_forms_fail_cleanly() {
        let m = key();
        let good = seal(&m, "c", "x").unwrap().to_string();
        let parts: Vec<&str> = good.split('.').collect();
        let short_ct = URL_SAFE_NO_PAD.encode([0u8; TAG_LEN - 1]);
        let bad = [
            String::new(),
            "v1".into(),
            "v1...".into(),
            format!("v2.{}.{}.{}", parts[1], parts[2], parts[3]),
            format!("{good}.extra"),
            format!("v1.{}.{}", parts[1], parts[2]),
            format!("v1.{}=.{}.{}", parts[1], parts[2], parts[3]),
            format!("v1.{}.{}.{}", &parts[1][1..], parts[2], parts[3]),
            format!("v1.{}.{}A.{}", parts[1], parts[2], parts[3]),
            format!("v1.{}.{}.{}", parts[1], parts[2], short_ct),
            format!("v1.{}.{}.{}", parts[1], parts[2], "!!!!"),
            format!(
                "v1.{}.{}.{}",
                parts[1].replace(|c: char| c.is_ascii_alphanumeric(), "+"),
                parts[2],
                parts[3]
            ),
            "v1.é.é.é".into(),
        ];
        for b in &bad {
            match SealedSecret::parse(b) {
                Err(SecretError::Malformed(_)) => {}
                other => panic!("{b:?} parsed as {other:?}"),
            }
        }
        assert!(serde_json::from_str::<SealedSecret>("\"v1.a.b.c\"").is_err());
        let via_json: SealedSecret = serde_json::from_str(&serde_json::to_string(&good).unwrap()).unwrap();
        assert_eq!(via_json.to_string(), good);
    }

    #[test]
    fn rewrap_keeps_ciphertext_and_opens_under_new_key_only() {
        let old = key();
        let new = key();
        let s = seal(&old, "integration:9:key", "sk-rotate-me").unwrap();
        let r = rewrap(&old, &new, &s).unwrap();
        assert_eq!(r.nonce, s.nonce);
        assert_eq!(r.ciphertext, s.ciphertext);
        assert_ne!(r.wrapped_key, s.wrapped_key);
        let (t_old, t_new) = (s.to_string(), r.to_string());
        assert_eq!(t_old.split('.').nth(2), t_new.split('.').nth(2));
        assert_eq!(t_old.split('.').nth(3), t_new.split('.').nth(3));
        assert_eq!(open(&new, "integration:9:key", &r).unwrap().expose(), "sk-rotate-me");
        assert!(matches!(
            open(&old, "integration:9:key", &r),
            Err(SecretError::WrongMasterKey)
        ));
        // The AAD binding survives rotation.
        assert!(matches!(open(&new, "other", &r), Err(SecretError::ContextMismatch)));
    }

    #[test]
    fn plaintext_never_appears_in_serialised_form() {
        let m = key();
        let secret = "sk-proj-THIS-IS-A-VERY-DISTINCTIVE-SECRET-VALUE-0123456789-abcdefghijklmnopqrstuvwxyz";
        let s = seal(&m, "integration:1:key", secret).unwrap();
        let text = s.to_string();
        let json = serde_json::to_string(&s).unwrap();
        for hay in [&text, &json, &format!("{s:?}")] {
            assert!(!hay.contains(secret));
            assert!(!hay.contains("DISTINCTIVE"));
            assert!(!hay.contains(&URL_SAFE_NO_PAD.encode(secret)));
            assert!(!hay.contains(&hex::encode(secret)));
        }
        assert!(!format!("{m:?}").contains(m.to_hex().expose()));
    }

    #[test]
    fn from_hex_is_strict() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        assert!(MasterKey::from_hex(hex64).is_ok());
        assert!(matches!(
            MasterKey::from_hex(&hex64[..63]),
            Err(SecretError::KeyLength(63))
        ));
        assert!(matches!(
            MasterKey::from_hex(&format!("{hex64}0")),
            Err(SecretError::KeyLength(65))
        ));
        let bad = format!("zz{}", &hex64[2..]);
        let err = MasterKey::from_hex(&bad).unwrap_err();
        assert!(matches!(err, SecretError::KeyNotHex));
        assert!(!err.to_string().contains(&hex64[2..]));
    }

    #[test]
    fn fingerprint_is_stable_and_distinct() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let a = MasterKey::from_hex(hex64).unwrap();
        let b = MasterKey::from_hex(hex64).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert_ne!(a.fingerprint(), key().fingerprint());
        assert!(!hex64.contains(&a.fingerprint()));
    }

    #[cfg(unix)]
    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn key_file_created_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (k1, src) = MasterKey::load_or_create(&data, None).unwrap();
        let path = data.join(MASTER_KEY_FILE);
        assert_eq!(src, KeySource::Created(path.clone()));
        assert_eq!(mode_of(&path), 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", k1.to_hex().expose()));
        let (k2, src) = MasterKey::load_or_create(&data, None).unwrap();
        assert_eq!(src, KeySource::File(path));
        assert_eq!(k1.fingerprint(), k2.fingerprint());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        std::fs::write(&path, format!("{}\n", key().to_hex().expose())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::load_or_create(dir.path(), None).unwrap_err();
        assert!(matches!(err, SecretError::KeyFileTooOpen { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(MasterKey::load_or_create(dir.path(), None).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_with_garbage_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        std::fs::write(&path, "not a key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            MasterKey::load_or_create(dir.path(), None),
            Err(SecretError::KeyLength(9))
        ));
    }

    #[test]
    fn env_key_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let (file_key, _) = MasterKey::load_or_create(dir.path(), None).unwrap();
        let env = key();
        let (k, src) = MasterKey::load_or_create(dir.path(), Some(env.to_hex().expose().as_str())).unwrap();
        assert_eq!(src, KeySource::Env);
        assert_eq!(k.fingerprint(), env.fingerprint());
        assert_ne!(k.fingerprint(), file_key.fingerprint());
        // A bad env value is an error, not a silent fall-back to the file.
        assert!(MasterKey::load_or_create(dir.path(), Some("abc")).is_err());
        // The env key never creates a file.
        let empty = tempfile::tempdir().unwrap();
        MasterKey::load_or_create(empty.path(), Some(env.to_hex().expose().as_str())).unwrap();
        assert!(!empty.path().join(MASTER_KEY_FILE).exists());
    }

    #[test]
    fn unreadable_data_dir_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the data directory should be.
        let not_dir = dir.path().join("file");
        std::fs::write(&not_dir, "x").unwrap();
        assert!(matches!(
            MasterKey::load_or_create(&not_dir, None),
            Err(SecretError::KeyFileIo { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn write_to_file_replaces_atomically_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _) = MasterKey::load_or_create(dir.path(), None).unwrap();
        let path = dir.path().join(MASTER_KEY_FILE);
        let new = key();
        new.write_to_file(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(MasterKey::read_file(&path).unwrap().fingerprint(), new.fingerprint());
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(MASTER_KEY_FILE)]);
        // Writing into a missing directory fails cleanly.
        assert!(matches!(
            new.write_to_file(&dir.path().join("missing/master.key")),
            Err(SecretError::KeyFileIo { .. })
        ));
    }

    #[test]
    fn sealed_fields_open_on_demand() {
        let m = Arc::new(key());
        let f = SealedFields::seal_all(
            m.clone(),
            "integration:42",
            &[("key", "sk-abc"), ("aws_secret_access_key", "wJal")],
        )
        .unwrap();
        assert_eq!(
            f.open("key").unwrap().as_ref().map(|s| s.expose().as_str()),
            Some("sk-abc")
        );
        assert_eq!(
            f.open("aws_secret_access_key")
                .unwrap()
                .as_ref()
                .map(|s| s.expose().as_str()),
            Some("wJal")
        );
        assert!(f.open("missing").unwrap().is_none());
        assert!(!format!("{f:?}").contains("sk-abc"));

        // A field copied to another record does not open.
        let mut moved = f.clone();
        moved.context = "integration:43".into();
        let err = moved.open("key").unwrap_err();
        assert!(!err.contains("sk-abc"));
        // Swapped fields within a record do not open either.
        let mut swapped = f.clone();
        swapped.fields[0].0 = "aws_secret_access_key".into();
        swapped.fields[1].0 = "key".into();
        assert!(swapped.open("key").is_err());

        // After rotation the record opens with the new key in the Arc.
        let new = Arc::new(key());
        let rotated = SealedFields {
            master: new.clone(),
            context: f.context.clone(),
            fields: f
                .fields
                .iter()
                .map(|(n, s)| (n.clone(), rewrap(&m, &new, s).unwrap()))
                .collect(),
        };
        assert_eq!(
            rotated.open("key").unwrap().as_ref().map(|s| s.expose().as_str()),
            Some("sk-abc")
        );
        let stale = SealedFields { master: m, ..rotated };
        assert!(stale.open("key").unwrap_err().contains("wrong key"));
    }
}
