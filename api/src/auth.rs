//! Bearer-token authentication and the rules a principal is held to (SPEC §5 "Auth").
//!
//! - [`TokenTable`]: the parsed `tokens_file` (TOML, one `[[token]]` table per principal,
//!   only SHA-256 digests of the tokens), validated with errors naming the entry and field.
//! - [`Authenticator`]: the table in force, looked up in constant time per entry, and
//!   reloadable (SIGHUP): a bad file keeps the table in force.
//! - [`Principal`]: who a request acts for, with its [`Role`], key prefixes and lease quota,
//!   and the checks that give 403 `forbidden` naming the principal and the rule.
//!
//! The HTTP router authenticates (401); the service authorizes (403, 429), because only it
//! knows which keys and leases a call touches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorCode};

/// What a principal may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads (GET) only.
    Read,
    /// Also acquire, extend, release, register, and create, keep alive and revoke leases.
    Write,
    /// Also change membership, and touch every prefix and every principal's leases.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal's name: recorded with its leases and in history.
    pub name: String,
    pub role: Role,
    /// Keys, names and semaphores it may touch: those starting with one of these (`""`
    /// matches everything). Admins may touch every key whatever their prefixes.
    pub prefixes: Vec<String>,
    /// The most live leases it may have at once; `None`: only the cluster's limit.
    pub max_leases: Option<u64>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// May it touch `key`?
    pub fn may_touch(&self, key: &str) -> bool {
        self.is_admin() || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// 403 unless the principal has at least `needed` (`what`: the action, for the message).
    pub fn require_role(&self, needed: Role, what: &str) -> Result<(), ApiError> {
        if self.role >= needed {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "principal {:?} has role {:?}; {what} needs role {:?} or above",
                self.name,
                self.role.as_str(),
                needed.as_str()
            ),
        ))
    }

    /// 403 unless `key` (of `kind`: "lock", "name", "semaphore") is within its prefixes.
    pub fn require_key(&self, kind: &str, key: &str) -> Result<(), ApiError> {
        if self.may_touch(key) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "principal {:?} may only touch keys starting with {}; {kind} {key:?} is outside them",
                self.name,
                self.prefix_list()
            ),
        ))
    }

    fn prefix_list(&self) -> String {
        if self.prefixes.is_empty() {
            return "(no prefixes: none)".to_string();
        }
        self.prefixes
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The `tokens_file` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    role: Role,
    prefixes: Vec<String>,
    #[serde(default)]
    max_leases: Option<u64>,
}

/// The principals of a tokens file, each under the SHA-256 digest of its token.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: Vec<([u8; 32], Arc<Principal>)>,
}

impl TokenTable {
    /// Parse and check a tokens file's text; errors name the entry and the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut entries: Vec<([u8; 32], Arc<Principal>)> = Vec::with_capacity(file.token.len());
        for (i, entry) in file.token.into_iter().enumerate() {
            let at = format!("token #{} ({:?})", i + 1, entry.name);
            if entry.name.trim().is_empty() {
                return Err(format!("token #{}: name must not be empty", i + 1));
            }
            let digest =
                parse_digest(&entry.sha256).map_err(|rule| format!("{at}: sha256 {rule}"))?;
            if entries.iter().any(|(_, p)| p.name == entry.name) {
                return Err(format!("{at}: name is used by an earlier token"));
            }
            if entries.iter().any(|(d, _)| d == &digest) {
                return Err(format!("{at}: sha256 is the digest of an earlier token"));
            }
            if entry.max_leases == Some(0) {
                return Err(format!("{at}: max_leases must be at least 1 (or left out)"));
            }
            entries.push((
                digest,
                Arc::new(Principal {
                    name: entry.name,
                    role: entry.role,
                    prefixes: entry.prefixes,
                    max_leases: entry.max_leases,
                }),
            ));
        }
        Ok(TokenTable { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal whose token this is. Every entry is compared, each in constant time,
    /// so the time taken says nothing about which digest (or how much of one) matched.
    pub fn lookup(&self, token: &str) -> Option<Arc<Principal>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (d, principal) in &self.entries {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

fn parse_digest(hex: &str) -> Result<[u8; 32], &'static str> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return Err("must be 64 hex digits (the SHA-256 of the token, e.g. from `sha256sum`)");
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "must be 64 hex digits (0-9, a-f)")?;
    }
    Ok(out)
}

/// The hex SHA-256 of a token, as a tokens file stores it.
pub fn token_digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tokens in force, read from `tokens_file` and re-read on [`Authenticator::reload`].
#[derive(Debug)]
pub struct Authenticator {
    path: Option<PathBuf>,
    table: RwLock<Arc<TokenTable>>,
}

impl Authenticator {
    /// Read `path`; an error names the file and what is wrong with it.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let table = read_table(path)?;
        Ok(Authenticator {
            path: Some(path.to_path_buf()),
            table: RwLock::new(Arc::new(table)),
        })
    }

    /// An authenticator over a table built in code (tests, embedding); reload keeps it.
    pub fn from_table(table: TokenTable) -> Self {
        Authenticator {
            path: None,
            table: RwLock::new(Arc::new(table)),
        }
    }

    /// Re-read the file. On success the new table serves every later request and the
    /// number of principals is returned; on error the table in force stays, and the error
    /// says why.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Ok(self.current().len());
        };
        let table = read_table(path)?;
        let n = table.len();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        Ok(n)
    }

    fn current(&self) -> Arc<TokenTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The principal of an `Authorization` header value; 401 `unauthorized` when it is
    /// missing, not `Bearer <token>`, or no principal's token.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Arc<Principal>, ApiError> {
        let Some(value) = authorization else {
            return Err(unauthorized(
                "this request needs a bearer token: send `Authorization: Bearer <token>` \
                 (the CLI takes --token or LEASEHOLD_AUTH_TOKEN)",
            ));
        };
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        self.current()
            .lookup(token)
            .ok_or_else(|| unauthorized("the bearer token is not one of this cluster's tokens"))
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

fn read_table(path: &Path) -> Result<TokenTable, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read auth.tokens_file {}: {e}", path.display()))?;
    let table = TokenTable::parse(&text)
        .map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))?;
    if table.is_empty() {
        return Err(format!(
            "auth.tokens_file {}: lists no [[token]]: every request would be refused",
            path.display()
        ));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, &str, &str, &str)]) -> String {
        entries
            .iter()
            .map(|(name, token, role, prefixes)| {
                format!(
                    "[[token]]\nname = {name:?}\nsha256 = {:?}\nrole = {role:?}\nprefixes = {prefixes}\n",
                    token_digest_hex(token)
                )
            })
            .collect()
    }

    #[test]
    fn tokens_resolve_to_their_principal() {
        let text = file(&[
            (
                "billing",
                "tok-b",
                "write",
                r#"["billing/", "svc/billing"]"#,
            ),
            ("ops", "tok-o", "admin", r#"[]"#),
        ]);
        let auth = Authenticator::from_table(TokenTable::parse(&text).unwrap());
        let p = auth.authenticate(Some(b"Bearer tok-b")).unwrap();
        assert_eq!(p.name, "billing");
        assert_eq!(p.role, Role::Write);
        assert!(p.may_touch("billing/x") && p.may_touch("svc/billing-1"));
        assert!(!p.may_touch("payroll/x"));
        let err = p.require_key("lock", "payroll/x").unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert!(err.message.contains("\"billing\"") && err.message.contains("\"billing/\""));
        let err = p
            .require_role(Role::Admin, "changing membership")
            .unwrap_err();
        assert!(err.message.contains("role \"write\""), "{}", err.message);
        // Admins touch everything.
        let ops = auth.authenticate(Some(b"bearer  tok-o ")).unwrap();
        assert!(ops.may_touch("anything"));
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_unauthorized() {
        let auth = Authenticator::from_table(
            TokenTable::parse(&file(&[("a", "t", "read", r#"[""]"#)])).unwrap(),
        );
        for header in [
            None,
            Some(&b"t"[..]),
            Some(b"Basic dDp0"),
            Some(b"Bearer "),
            Some(b"Bearer nope"),
        ] {
            let err = auth.authenticate(header).unwrap_err();
            assert_eq!(err.code, ErrorCode::Unauthorized, "{header:?}");
        }
    }

    #[test]
    fn bad_files_name_the_entry_and_the_field() {
        let cases = [
            ("[[token]]\nname = \"a\"\nsha256 = \"abc\"\nrole = \"read\"\nprefixes = []\n", "token #1 (\"a\"): sha256 must be 64 hex digits"),
            ("[[token]]\nname = \"a\"\nsha256 = \"abc\"\nrole = \"root\"\nprefixes = []\n", "unknown variant `root`"),
            ("[[token]]\nname = \"a\"\nrole = \"read\"\nprefixes = []\n", "missing field `sha256`"),
            ("[[token]]\nname = \"a\"\nsha256 = \"abc\"\nrole = \"read\"\nprefixes = []\ncolour = 1\n", "unknown field `colour`"),
        ];
        for (text, want) in cases {
            let err = TokenTable::parse(text).unwrap_err();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let dup = file(&[("a", "t1", "read", "[]"), ("a", "t2", "read", "[]")]);
        assert!(TokenTable::parse(&dup)
            .unwrap_err()
            .contains("name is used by an earlier token"));
        let same = file(&[("a", "t1", "read", "[]"), ("b", "t1", "read", "[]")]);
        assert!(TokenTable::parse(&same)
            .unwrap_err()
            .contains("digest of an earlier token"));
    }

    #[test]
    fn a_bad_reload_keeps_the_tokens_in_force() {
        let dir = std::env::temp_dir().join(format!("leasehold-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        std::fs::write(&path, file(&[("a", "old", "read", "[]")])).unwrap();
        let auth = Authenticator::from_file(&path).unwrap();
        assert!(auth.authenticate(Some(b"Bearer old")).is_ok());
        std::fs::write(&path, "not toml [[").unwrap();
        assert!(auth.reload().is_err());
        assert!(
            auth.authenticate(Some(b"Bearer old")).is_ok(),
            "old tokens stay"
        );
        std::fs::write(&path, file(&[("b", "new", "read", "[]")])).unwrap();
        assert_eq!(auth.reload(), Ok(1));
        assert!(auth.authenticate(Some(b"Bearer old")).is_err());
        assert_eq!(auth.authenticate(Some(b"Bearer new")).unwrap().name, "b");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
