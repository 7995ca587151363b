//! Who may do what: named tokens with roles, read from an auth file that
//! holds only a hash of each secret.
//!
//! The file is JSON Lines, one token per line:
//! `{"name":"pos-gateway","roles":["ingest"],"sha256":"<hex>"}`, so that
//! `stockflow token create` appends to it and an operator can read, diff
//! and remove entries by hand. Secrets are 32 random bytes: a plain
//! SHA-256 of one is as hard to invert as the secret is to guess, so no
//! slow password hash is needed. The server reloads the file on SIGHUP.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use parking_lot::RwLock;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do. An operation needs one role; a token holds any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every read: levels, catalog, orders, alerts, dead letters, the
    /// stream, the document.
    Read,
    /// Events, in canonical and source formats.
    Ingest,
    /// Place, fulfil, cancel and extend orders.
    Orders,
    /// Catalog writes, alert acknowledgements and mutes, dead-letter
    /// replay and discard, the simulator, check.
    Admin,
    /// GET /metrics (unless the server lets anyone scrape it).
    Metrics,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Read,
        Role::Ingest,
        Role::Orders,
        Role::Admin,
        Role::Metrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Ingest => "ingest",
            Role::Orders => "orders",
            Role::Admin => "admin",
            Role::Metrics => "metrics",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// One line of the auth file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    pub roles: Vec<Role>,
    /// SHA-256 of the secret, lowercase hex.
    pub sha256: String,
}

/// The tokens a server accepts, reloadable.
pub struct Tokens {
    path: PathBuf,
    entries: RwLock<Arc<Vec<Loaded>>>,
}

struct Loaded {
    name: String,
    roles: Vec<Role>,
    digest: [u8; 32],
}

/// Who made a request, as the server knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub roles: Vec<Role>,
}

/// Names the file and how many tokens it holds: never a digest.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("path", &self.path)
            .field("tokens", &self.entries.read().len())
            .finish()
    }
}

impl Tokens {
    /// Reads `path`; an error names the line at fault.
    pub fn load(path: &Path) -> anyhow::Result<Tokens> {
        let entries = read(path)?;
        Ok(Tokens {
            path: path.to_owned(),
            entries: RwLock::new(Arc::new(entries)),
        })
    }

    /// Reads the file again; on an error the tokens stay as they were.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let entries = read(&self.path)?;
        let count = entries.len();
        *self.entries.write() = Arc::new(entries);
        Ok(count)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many tokens the file held when last read.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caller a presented secret belongs to. Every entry is compared,
    /// each in constant time, so the answer's timing says nothing about
    /// which entry (or how much of one) matched.
    pub fn identify(&self, secret: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let entries = self.entries.read().clone();
        let mut found = None;
        for entry in entries.iter() {
            if same(&entry.digest, &digest) && found.is_none() {
                found = Some(Caller {
                    name: entry.name.clone(),
                    roles: entry.roles.clone(),
                });
            }
        }
        found
    }
}

impl Tokens {
    /// The caller a token's name stands for now (a stream cookie names
    /// its token: one removed from the file, or without a role it had,
    /// no longer opens what it did).
    pub fn named(&self, name: &str) -> Option<Caller> {
        self.bound(name).map(|(caller, _)| caller)
    }

    /// [`Tokens::named`], with the digest of the token's secret: what a
    /// cookie issued to it is bound to, so that a new token under an old
    /// name does not revive the old one's cookies.
    pub fn bound(&self, name: &str) -> Option<(Caller, [u8; 32])> {
        let entries = self.entries.read().clone();
        entries.iter().find(|e| e.name == name).map(|e| {
            let caller = Caller {
                name: e.name.clone(),
                roles: e.roles.clone(),
            };
            (caller, e.digest)
        })
    }
}

/// The secret the instances of a Kafka-mode cluster present to each
/// other (`serve --cluster-secret-file`): it opens the endpoints only they
/// call (`/v1/internal/…`) and the reads they forward, and no user token
/// carries it. Every instance reads the same file.
///
/// The file's first line is the secret an instance presents; a second
/// line is one it also accepts, so the secret can be changed without
/// stopping the cluster (see the README's "Access").
pub struct ClusterSecret {
    secret: String,
    /// Of the presented secret, then of the other accepted one.
    digests: Vec<[u8; 32]>,
}

/// Never the secret.
impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// Shorter secrets are refused: they could be guessed.
    pub const CHARS_MIN: usize = 32;

    /// Reads the secret (the first non-empty line) and, if there is a
    /// second, the other secret accepted.
    pub fn load(path: &Path) -> anyhow::Result<Arc<ClusterSecret>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the cluster secret file {}", path.display()))?;
        let secrets: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let make = || {
            format!(
                "make one with `openssl rand -hex 32 > {}` and give every instance the same file",
                path.display()
            )
        };
        if secrets.is_empty() || secrets.len() > 2 {
            bail!(
                "{} must hold the cluster secret on its first line and at most one more accepted on a second; {}",
                path.display(),
                make()
            );
        }
        for secret in &secrets {
            // Sent in a header: printable ASCII only.
            if secret.len() < Self::CHARS_MIN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                bail!(
                    "each cluster secret in {} must be at least {} printable ASCII characters without spaces; {}",
                    path.display(),
                    Self::CHARS_MIN,
                    make()
                );
            }
        }
        Ok(Arc::new(ClusterSecret {
            digests: secrets
                .iter()
                .map(|s| Sha256::digest(s.as_bytes()).into())
                .collect(),
            secret: secrets[0].to_owned(),
        }))
    }

    /// Whether `presented` is the secret or the other one accepted
    /// (compared in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digests
            .iter()
            .fold(false, |any, d| any | same(&digest, d))
    }

    /// A key for `purpose` that every instance derives alike (the stream
    /// cookie's, so that one instance's cookie opens another's stream).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"stockflow cluster key\0");
        hasher.update(purpose.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.secret.as_bytes());
        hasher.finalize().into()
    }

    /// The Authorization header's value an instance sends.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret)
    }
}

/// Names the server gives callers that hold no token of the file, and
/// itself (the audit's `by` of what it does on its own).
pub const RESERVED: [&str; 3] = ["anonymous", "cluster", stockflow_core::SERVER];

/// Why `name` cannot name a token: the audit records it with every
/// change its holder makes, so it is short, printable and not a name the
/// server uses itself.
fn bad_name(name: &str) -> Option<String> {
    let max = stockflow_core::limits::BY_BYTES_MAX;
    if name.is_empty() || name.chars().any(|c| c.is_control()) {
        Some("a token's name must be printable and not empty".into())
    } else if name.len() > max {
        Some(format!("a token's name must be at most {max} bytes"))
    } else if RESERVED.contains(&name) {
        Some(format!(
            "{name:?} names the server's own callers; pick another name"
        ))
    } else {
        None
    }
}

/// Constant-time equality of two digests (hand-written: eight lines do
/// not justify a dependency).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut differ = 0u8;
    for (x, y) in a.iter().zip(b) {
        differ |= x ^ y;
    }
    std::hint::black_box(differ) == 0
}

fn read(path: &Path) -> anyhow::Result<Vec<Loaded>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the auth file {}", path.display()))?;
    let mut entries: Vec<Loaded> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let entry: Entry =
            serde_json::from_str(line).with_context(|| format!("{}: not a token entry", at()))?;
        let digest = hex::decode(&entry.sha256)
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .with_context(|| format!("{}: sha256 must be 64 hex digits", at()))?;
        if let Some(why) = bad_name(&entry.name) {
            bail!("{}: {why}", at());
        }
        if entries.iter().any(|e| e.name == entry.name) {
            bail!("{}: token names must be unique", at());
        }
        entries.push(Loaded {
            name: entry.name,
            roles: entry.roles,
            digest,
        });
    }
    Ok(entries)
}

/// A new token: appends its entry to `path` (created with mode 0600 if
/// missing) and returns the secret, which is kept nowhere else.
pub fn create(path: &Path, name: &str, roles: &[Role]) -> anyhow::Result<String> {
    if let Some(why) = bad_name(name) {
        bail!("{why}");
    }
    if roles.is_empty() {
        bail!("a token needs at least one --role");
    }
    if path.exists() && read(path)?.iter().any(|e| e.name == name) {
        bail!(
            "{} already has a token named {name:?}; remove its line or pick another name",
            path.display()
        );
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("sf_{}", hex::encode(bytes));
    let entry = Entry {
        name: name.to_owned(),
        roles: roles.to_vec(),
        sha256: hex::encode(Sha256::digest(secret.as_bytes())),
    };
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot open {} to append a token", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(&entry)?)?;
    file.sync_all()?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_is_known_by_its_secret_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let pos = create(&path, "pos", &[Role::Ingest]).unwrap();
        let web = create(&path, "web", &[Role::Read, Role::Orders]).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.identify(&pos).unwrap().name, "pos");
        assert_eq!(
            tokens.identify(&web).unwrap().roles,
            [Role::Read, Role::Orders]
        );
        assert_eq!(tokens.identify("sf_guess"), None);
        assert_eq!(tokens.identify(&pos[..pos.len() - 1]), None);
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(!file.contains(&pos) && !file.contains(&web), "{file}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(
            create(&path, "pos", &[Role::Read]).is_err(),
            "names are unique"
        );
    }

    #[test]
    fn a_reload_takes_the_file_as_it_is_now_or_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let first = create(&path, "first", &[Role::Read]).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        let second = create(&path, "second", &[Role::Admin]).unwrap();
        assert_eq!(tokens.identify(&second), None);
        assert_eq!(tokens.reload().unwrap(), 2);
        assert_eq!(tokens.identify(&second).unwrap().name, "second");
        std::fs::write(&path, "not json\n").unwrap();
        let error = tokens.reload().unwrap_err().to_string();
        assert!(error.contains(":1"), "{error}");
        assert_eq!(tokens.identify(&first).unwrap().name, "first");
    }

    #[test]
    fn a_name_the_audit_cannot_record_is_refused_when_made_and_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let long = "n".repeat(stockflow_core::limits::BY_BYTES_MAX + 1);
        for name in [
            "",
            "a\nb",
            long.as_str(),
            "anonymous",
            "stockflow",
            "cluster",
        ] {
            assert!(create(&path, name, &[Role::Read]).is_err(), "{name:?}");
        }
        create(
            &path,
            &"n".repeat(stockflow_core::limits::BY_BYTES_MAX),
            &[Role::Read],
        )
        .unwrap();
        // A hand-edited file naming a token as the server names itself.
        let entry =
            serde_json::json!({"name": "stockflow", "roles": ["admin"], "sha256": "0".repeat(64)});
        std::fs::write(&path, format!("{entry}\n")).unwrap();
        let error = Tokens::load(&path).unwrap_err().to_string();
        assert!(error.contains(":1") && error.contains("server"), "{error}");
    }

    #[test]
    fn a_cluster_secret_file_may_name_a_second_secret_to_accept_while_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.secret");
        let (new, old) = ("n".repeat(40), "o".repeat(40));
        std::fs::write(&path, format!("{new}\n{old}\n")).unwrap();
        let secret = ClusterSecret::load(&path).unwrap();
        assert_eq!(
            secret.bearer(),
            format!("Bearer {new}"),
            "the first is presented"
        );
        assert!(secret.matches(&new) && secret.matches(&old));
        assert!(!secret.matches(&"x".repeat(40)) && !secret.matches(""));
        assert_eq!(format!("{secret:?}"), "ClusterSecret(..)");
        for bad in [
            format!("{new}\n{old}\n{}\n", "t".repeat(40)),
            format!("{new}\nshort\n"),
            "\n\n".to_owned(),
        ] {
            std::fs::write(&path, bad).unwrap();
            let error = ClusterSecret::load(&path).unwrap_err().to_string();
            assert!(error.contains("openssl rand"), "{error}");
        }
    }
}
