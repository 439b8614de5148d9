//! `leasehold local-cluster`: `serve` processes on loopback, with the CA and certificates
//! of `--tls` and the tokens of `--auth` made for them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::serve::wait_for_signal;
use super::LocalClusterArgs;

pub(super) async fn local_cluster(args: LocalClusterArgs) -> i32 {
    if args.nodes == 0 || args.nodes > 9 {
        eprintln!(
            "leasehold: --nodes must be between 1 and 9, got {}",
            args.nodes
        );
        return 2;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("leasehold: cannot find my own executable: {e}");
            return 1;
        }
    };
    // Declared before the children, so it outlives them: a temporary directory is removed
    // only once every node has stopped.
    let security = match LocalSecurity::prepare(&args) {
        Ok(security) => security,
        Err(e) => {
            eprintln!("leasehold: {e}");
            return 1;
        }
    };
    let client_port = |n: u64| args.base_port as u64 + n;
    let peer_port = |n: u64| args.base_port as u64 + 100 + n;
    let members: Vec<String> = (1..=args.nodes)
        .map(|n| format!("{n}=127.0.0.1:{}", peer_port(n)))
        .collect();
    let mut children = Vec::new();
    for n in 1..=args.nodes {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("serve")
            .args(["--node-id", &n.to_string()])
            .args(["--client-addr", &format!("127.0.0.1:{}", client_port(n))])
            .args(["--peer-addr", &format!("127.0.0.1:{}", peer_port(n))])
            .args(["--cluster-members", &members.join(",")])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = &args.data_dir {
            cmd.args(["--data-dir", &node_dir(dir, n).display().to_string()]);
        }
        if let Some(tls) = &security.tls {
            let (cert, key) = &tls.nodes[(n - 1) as usize];
            cmd.arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .arg("--tls-ca")
                .arg(&tls.ca);
        }
        if let Some(tokens_file) = &security.tokens_file {
            cmd.arg("--auth-tokens-file").arg(tokens_file);
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                eprintln!("leasehold: cannot start node {n}: {e}");
                return 1;
            }
        }
    }
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoints: Vec<String> = (1..=args.nodes)
        .map(|n| format!("{scheme}://127.0.0.1:{}", client_port(n)))
        .collect();
    let ca = security.tls.as_ref().map(|tls| tls.ca.as_path());
    if let Err(e) = wait_ready(&endpoints, ca, &mut children).await {
        eprintln!("leasehold: {e}");
        for child in &mut children {
            let _ = child.kill().await;
        }
        return 1;
    }
    println!(
        "leasehold local cluster of {} nodes is up{}:",
        args.nodes,
        security.describe()
    );
    for (i, (endpoint, child)) in endpoints.iter().zip(&children).enumerate() {
        println!(
            "  node {}  {endpoint}  (pid {})",
            i + 1,
            child.id().map_or("?".to_string(), |p| p.to_string())
        );
    }
    security.print(&endpoints);
    println!("press Ctrl-C to stop the cluster");
    wait_for_signal().await;
    for child in &mut children {
        if let Some(pid) = child.id() {
            terminate(pid);
        }
    }
    for child in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        let _ = child.kill().await;
    }
    0
}

fn node_dir(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("node-{n}"))
}

/// The principals `local-cluster --auth` makes: name, role, prefixes, `max_leases`.
const LOCAL_PRINCIPALS: [(&str, &str, &[&str], Option<u64>); 3] = [
    ("admin", "admin", &[""], None),
    ("demo", "write", &["demo/"], Some(1000)),
    ("viewer", "read", &[""], None),
];

/// Random bytes in a generated token (192 bits).
const LOCAL_TOKEN_BYTES: usize = 24;

/// A bearer token made by `local-cluster --auth`, and whom it stands for.
struct LocalToken {
    name: &'static str,
    role: &'static str,
    prefixes: &'static [&'static str],
    max_leases: Option<u64>,
    token: String,
}

/// The CA and the per-node certificates of `local-cluster --tls`.
struct LocalTls {
    ca: PathBuf,
    /// Certificate and key of node N at index N - 1.
    nodes: Vec<(PathBuf, PathBuf)>,
}

/// What `local-cluster --tls` and `--auth` made, and where. A temporary directory is
/// removed when this is dropped.
#[derive(Default)]
struct LocalSecurity {
    tls: Option<LocalTls>,
    tokens_file: Option<PathBuf>,
    tokens: Vec<LocalToken>,
    temporary_dir: Option<PathBuf>,
}

impl Drop for LocalSecurity {
    fn drop(&mut self) {
        if let Some(dir) = self.temporary_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl LocalSecurity {
    /// Make the certificates and tokens asked for, in `--data-dir` or a new temporary
    /// directory. Files of an earlier run are replaced: tokens are only printed once.
    fn prepare(args: &LocalClusterArgs) -> Result<Self, String> {
        let mut security = LocalSecurity::default();
        if !args.tls && !args.auth {
            return Ok(security);
        }
        let dir = match &args.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                dir.clone()
            }
            None => {
                let dir = new_private_temp_dir()?;
                security.temporary_dir = Some(dir.clone());
                dir
            }
        };
        if args.tls {
            security.tls = Some(make_local_certs(&dir.join("tls"), args.nodes)?);
        }
        if args.auth {
            for (name, role, prefixes, max_leases) in LOCAL_PRINCIPALS {
                security.tokens.push(LocalToken {
                    name,
                    role,
                    prefixes,
                    max_leases,
                    token: new_token()?,
                });
            }
            let path = dir.join("tokens.toml");
            std::fs::write(&path, tokens_file_text(&security.tokens))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            security.tokens_file = Some(path);
        }
        Ok(security)
    }

    /// For the "is up" line.
    fn describe(&self) -> &'static str {
        match (self.tls.is_some(), self.tokens_file.is_some()) {
            (true, true) => " (HTTPS, mutual TLS between the nodes, bearer tokens)",
            (true, false) => " (HTTPS, mutual TLS between the nodes)",
            (false, true) => " (bearer tokens)",
            (false, false) => "",
        }
    }

    /// The CA, the tokens, and lines to paste into a shell.
    fn print(&self, endpoints: &[String]) {
        if let Some(tls) = &self.tls {
            println!("CA certificate: {}", tls.ca.display());
        }
        if let Some(tokens_file) = &self.tokens_file {
            println!(
                "tokens (shown only now; {} keeps only their SHA-256):",
                tokens_file.display()
            );
            for t in &self.tokens {
                let prefixes: Vec<String> = t.prefixes.iter().map(|p| format!("{p:?}")).collect();
                let quota = t
                    .max_leases
                    .map_or(String::new(), |m| format!("  max_leases={m}"));
                println!(
                    "  {:<7} role={:<6} prefixes=[{}]{quota}  {}",
                    t.name,
                    t.role,
                    prefixes.join(", "),
                    t.token
                );
            }
        }
        println!("export LEASEHOLD_ENDPOINTS={}", endpoints.join(","));
        let mut curl = String::from("curl");
        if let Some(tls) = &self.tls {
            let ca = shell_quote(&tls.ca.display().to_string());
            println!("export LEASEHOLD_CACERT={ca}");
            curl.push_str(&format!(" --cacert {ca}"));
        }
        if let Some(admin) = self.tokens.iter().find(|t| t.name == "admin") {
            println!("# the admin token; an app confined to demo/ would use demo's");
            println!("export LEASEHOLD_AUTH_TOKEN={}", admin.token);
            curl.push_str(&format!(" -H \"Authorization: Bearer {}\"", admin.token));
        }
        if self.tls.is_some() || self.tokens_file.is_some() {
            if let Some(first) = endpoints.first() {
                println!("{curl} {first}/v1/cluster");
            }
        }
    }
}

/// The CA and node certificates, made by the node crate's generator.
fn make_local_certs(dir: &Path, nodes: u64) -> Result<LocalTls, String> {
    let certs = leasehold_node::generate_local_certs(dir, nodes)?;
    Ok(LocalTls {
        ca: certs.ca,
        nodes: certs.nodes,
    })
}

/// A new directory only this user can read, under the system's temporary directory.
fn new_private_temp_dir() -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "leasehold-local-cluster-{}-{nanos:x}",
        std::process::id()
    ));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    // `create`, not `create_all`: an existing directory of that name is not ours.
    builder
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// A new random bearer token: `lh_` and 48 hex digits.
fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; LOCAL_TOKEN_BYTES];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "cannot get random bytes for the tokens".to_string())?;
    Ok(format!("lh_{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tokens file (SPEC §5 "Auth"): one `[[token]]` table per principal, with the
/// SHA-256 of its token, never the token.
fn tokens_file_text(tokens: &[LocalToken]) -> String {
    use sha2::{Digest, Sha256};
    let mut text = String::from(
        "# Written by `leasehold local-cluster --auth`, which printed the tokens once.\n",
    );
    for t in tokens {
        // Names, roles and prefixes are the fixed ASCII strings of LOCAL_PRINCIPALS, so
        // Rust's quoting is TOML's.
        let prefixes: Vec<String> = t.prefixes.iter().map(|p| format!("{p:?}")).collect();
        text.push_str(&format!(
            "\n[[token]]\nname = {:?}\nsha256 = \"{}\"\nrole = {:?}\nprefixes = [{}]\n",
            t.name,
            hex(&Sha256::digest(t.token.as_bytes())),
            t.role,
            prefixes.join(", ")
        ));
        if let Some(m) = t.max_leases {
            text.push_str(&format!("max_leases = {m}\n"));
        }
    }
    text
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Wait (bounded) until every node answers `/readyz`, so the printed endpoints work.
/// `ca`: the CA to trust for `https://` endpoints (`/readyz` needs no token). A node
/// that is slow is reported and waited for no longer; one that exited is an error.
async fn wait_ready(
    endpoints: &[String],
    ca: Option<&Path>,
    children: &mut [tokio::process::Child],
) -> Result<(), String> {
    // Loopback never goes through a proxy, whatever HTTPS_PROXY says.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2));
    if let Some(ca) = ca {
        let cert = std::fs::read(ca)
            .map_err(|e| e.to_string())
            .and_then(|pem| reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string()));
        match cert {
            Ok(cert) => builder = builder.add_root_certificate(cert),
            Err(e) => return Err(format!("cannot use the CA {}: {e}", ca.display())),
        }
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => {
            return Err(format!(
                "cannot make an HTTP client to wait for the nodes: {e}"
            ))
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for (i, endpoint) in endpoints.iter().enumerate() {
        let url = format!("{endpoint}/readyz");
        loop {
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().is_success() {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = children.get_mut(i).map(|c| c.try_wait()) {
                return Err(format!(
                    "node {} exited ({status}) before it was ready; see its log above",
                    i + 1
                ));
            }
            if tokio::time::Instant::now() > deadline {
                eprintln!("leasehold: {endpoint} is not ready yet; check its log above");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid we spawned and SIGTERM has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

#[cfg(not(unix))]
fn terminate(_pid: u32) {}

#[cfg(test)]
mod tests {
    use leasehold_api::auth::{Role, TokenTable};

    use super::*;

    fn local_tokens() -> Vec<LocalToken> {
        LOCAL_PRINCIPALS
            .iter()
            .map(|&(name, role, prefixes, max_leases)| LocalToken {
                name,
                role,
                prefixes,
                max_leases,
                token: new_token().unwrap(),
            })
            .collect()
    }

    #[test]
    fn the_tokens_file_parses_and_finds_each_principal_by_its_token() {
        let tokens = local_tokens();
        let text = tokens_file_text(&tokens);
        for t in &tokens {
            assert!(!text.contains(&t.token), "the file holds a token:\n{text}");
        }
        let table = TokenTable::parse(&text).unwrap();
        assert_eq!(table.len(), 3);
        let admin = table.lookup(&tokens[0].token).unwrap();
        assert_eq!((admin.name.as_str(), admin.role), ("admin", Role::Admin));
        let demo = table.lookup(&tokens[1].token).unwrap();
        assert_eq!((demo.name.as_str(), demo.role), ("demo", Role::Write));
        assert_eq!(demo.prefixes, ["demo/"]);
        assert_eq!(demo.max_leases, Some(1000));
        assert!(demo.may_touch("demo/job") && !demo.may_touch("other/job"));
        let viewer = table.lookup(&tokens[2].token).unwrap();
        assert_eq!((viewer.name.as_str(), viewer.role), ("viewer", Role::Read));
        assert_eq!(viewer.prefixes, [""]);
        assert!(table.lookup("lh_not-a-token").is_none());
    }

    #[test]
    fn tokens_are_new_each_time() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 2 * LOCAL_TOKEN_BYTES);
        assert!(a.starts_with("lh_") && a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn printed_paths_are_one_shell_word() {
        assert_eq!(shell_quote("/tmp/x/ca.crt"), "/tmp/x/ca.crt");
        assert_eq!(shell_quote("/tmp/my dir/ca.crt"), "'/tmp/my dir/ca.crt'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
