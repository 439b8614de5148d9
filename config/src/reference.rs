//! `docs/reference/config.md`, generated from [`KEYS`]: every key with its type, default,
//! environment variable, flag and meaning. A test regenerates it and fails when the
//! committed file differs; `LEASEHOLD_UPDATE_REFERENCE=1 cargo test -p leasehold-config
//! reference` rewrites it.

use std::fmt::Write;

use crate::keys::{ValueKind, KEYS};

/// The command that rewrites the generated reference.
pub const UPDATE_COMMAND: &str =
    "LEASEHOLD_UPDATE_REFERENCE=1 cargo test -p leasehold-config reference";

fn type_of(kind: ValueKind) -> String {
    match kind {
        ValueKind::Integer { max } => format!("integer, 0 to {max}"),
        ValueKind::Address => "`ip:port`".into(),
        ValueKind::HostPort => "`ip:port` or `host:port`".into(),
        ValueKind::Path => "path".into(),
        ValueKind::Members => "list of `id=host:port`".into(),
        ValueKind::Choice(words) => {
            let words: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
            format!("one of {}", words.join(", "))
        }
    }
}

/// The section a key belongs to: its table in the file, or the top level.
fn section(key: &str) -> &str {
    key.split_once('.')
        .map_or("(top level)", |(table, _)| table)
}

/// The whole of `docs/reference/config.md`.
pub fn config_markdown() -> String {
    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    let _ = writeln!(
        out,
        "<!-- Generated from `config::keys::KEYS`; do not edit. Rewrite with `{UPDATE_COMMAND}`. -->\n"
    );
    out.push_str(
        "A setting comes from, in rising precedence: its default, the TOML file \
         (`leasehold serve --config FILE`, the dotted key's table and name), its \
         environment variable, and its flag. Every value is checked before the node \
         starts; an error names the key and the rule. `leasehold serve --help` lists \
         the same keys.\n",
    );
    let mut current = None;
    for k in KEYS {
        let table = section(k.key);
        if current != Some(table) {
            current = Some(table);
            let title = if table == "(top level)" {
                "Top level".to_string()
            } else {
                format!("`[{table}]`")
            };
            let _ = writeln!(out, "\n## {title}\n");
            out.push_str("| key | type | default | environment | flag | meaning |\n");
            out.push_str("|---|---|---|---|---|---|\n");
        }
        let _ = writeln!(
            out,
            "| `{}` | {} | `{}` | `{}` | `{}` | {} |",
            k.key,
            type_of(k.kind),
            k.default,
            k.env,
            k.flag,
            k.help.replace('|', "\\|")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_config_md_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reference/config.md");
        let generated = config_markdown();
        if std::env::var_os("LEASEHOLD_UPDATE_REFERENCE").is_some() {
            std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/reference/config.md is stale (or missing): run `{UPDATE_COMMAND}`"
        );
    }

    #[test]
    fn every_key_is_in_the_reference() {
        let generated = config_markdown();
        for k in KEYS {
            for name in [k.key, k.env, k.flag] {
                assert!(generated.contains(&format!("`{name}`")), "{name} missing");
            }
        }
    }
}
