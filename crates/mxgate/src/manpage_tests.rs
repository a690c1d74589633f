use std::path::{Path, PathBuf};

use clap::CommandFactory;
use mxgate_config::Config;

use super::*;
use crate::cli::Cli;

fn cli() -> Command {
    Cli::command()
}

/// Every subcommand below `cmd` as its full path (`mxgate queue list`), with `cmd`.
fn command_paths(prefix: &str, cmd: &Command, out: &mut Vec<(String, Command)>) {
    for sub in documented_subcommands(cmd) {
        let path = format!("{prefix} {}", sub.get_name());
        out.push((path.clone(), sub.clone()));
        command_paths(&path, sub, out);
    }
}

#[test]
fn mxgate_8_documents_every_subcommand_and_its_options() {
    let page = mxgate_8(&cli(), "2026-01-01");
    let mut built = cli();
    built.build();
    let mut paths = Vec::new();
    command_paths("mxgate", &built, &mut paths);
    assert!(paths.len() >= 10, "{paths:?}");
    for (path, cmd) in &paths {
        assert!(
            page.contains(&format!(".SS {}\n", roff_quoted(path))),
            "{path} missing"
        );
        for arg in documented_args(cmd) {
            if let Some(long) = arg.get_long() {
                let form = format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-"));
                assert!(page.contains(&form), "{path}: --{long} missing");
            }
        }
        let about = about_of(cmd);
        let first = about.lines().next().unwrap_or_default();
        assert!(page.contains(&roff_text(first)), "{path}: about missing");
    }
    for needle in [
        ".TH MXGATE 8 \"2026\\-01\\-01\" \"mxgate ",
        "\\fBMXGATE_CONFIG\\fR",
        "\\fBSIGHUP\\fR",
        ".SH EXIT STATUS",
        "\\fBmxgate.toml\\fR(5)",
        // --log-format lists its choices and its default.
        "One of \\fBtext\\fR, \\fBjson\\fR. Default: \\fBtext\\fR.",
    ] {
        assert!(page.contains(needle), "{needle} missing");
    }
    assert!(!page.contains(".SS \"mxgate help\""));
}

#[test]
fn roff_text_neutralises_requests_and_escapes() {
    assert_eq!(roff_text(".SH x\n'y\nz"), "\\&.SH x\n\\&'y\nz");
    assert_eq!(roff_text("a\\b"), "a\\eb");
    assert_eq!(
        roff_text("see `control.socket`"),
        "see \\fBcontrol.socket\\fR"
    );
    assert_eq!(roff_text("`open"), "\\fBopen\\fR");
    assert_eq!(roff_text("check-config"), "check\\-config");
    assert_eq!(roff_quoted("a \"b\""), "\"a \\(dqb\\(dq\"");
}

#[test]
fn the_annotated_file_parses_into_tables_with_comments() {
    let doc = parse_annotated(ANNOTATED_CONFIG).expect("etc/mxgate.toml");
    assert!(doc.header[0].starts_with("mxgate"));
    let names: Vec<&str> = doc.tables.iter().map(|t| t.name.as_str()).collect();
    for name in [
        "server",
        "listener",
        "queue",
        "policy",
        "policy.domains",
        "control",
    ] {
        assert!(names.contains(&name), "{name}: {names:?}");
    }
    for table in doc.tables.iter().filter(|t| !is_example_table(t)) {
        // A key without a comment shares the one of the key above it.
        if let Some(entry) = table.entries.first() {
            assert!(
                !entry.comment.is_empty(),
                "{}.{} has no comment in etc/mxgate.toml",
                table.name,
                entry.key
            );
        }
    }
}

#[test]
fn parse_annotated_reads_multi_line_values_and_rejects_other_lines() {
    let doc =
        parse_annotated("# t\n\n[a]\n# c\nk = [\n  \"x\",\n  \"y\",\n]\nz = 1\n").expect("valid");
    let a = &doc.tables[0];
    assert_eq!(a.entries[0].key, "k");
    assert_eq!(a.entries[0].value, "[ \"x\", \"y\", ]");
    assert_eq!(a.entries[0].comment, vec!["c".to_string()]);
    assert_eq!(a.entries[1].key, "z");
    assert!(a.entries[1].comment.is_empty());

    let err = parse_annotated("[a]\nnot toml\n").expect_err("garbage line");
    assert_eq!(err.line, 2);
    assert!(parse_annotated("k = 1\n").is_err(), "key before any table");
    assert!(parse_annotated("[a]\nk = [\n").is_err(), "unclosed value");
}

#[test]
fn mxgate_toml_5_documents_every_key_of_the_annotated_file() {
    let page = mxgate_toml_5(ANNOTATED_CONFIG, "0.1.0", "2026-01-01").expect("page");
    let doc = parse_annotated(ANNOTATED_CONFIG).expect("etc/mxgate.toml");
    for table in &doc.tables {
        assert!(page.contains(&format!(".SH \"[{}]\"", roff_text(&table.name))));
        for entry in &table.entries {
            let needle = if is_example_table(table) {
                format!("{} = ", roff_text(&entry.key))
            } else {
                format!(
                    "\\fB{}.{}\\fR = ",
                    roff_text(&table.name),
                    roff_text(&entry.key)
                )
            };
            assert!(page.contains(&needle), "{needle} missing");
        }
    }
    assert!(page.starts_with(".TH MXGATE.TOML 5 "));
    assert!(page.contains("\\fBqueue.path\\fR = \"/var/lib/mxgate/queue\"\nThe spool."));
}

#[test]
fn packaged_config_is_valid_and_drops_only_the_examples() {
    let annotated = Config::from_toml_str(ANNOTATED_CONFIG).expect("annotated");
    assert!(
        !annotated.policy.domains.is_empty(),
        "the examples the test expects"
    );
    assert_eq!(annotated.server.hostname, "relay.example.net");

    let text = packaged_config(ANNOTATED_CONFIG).expect("packaged");
    let packaged = Config::from_toml_str(&text).expect("packaged config must be valid");
    assert!(packaged.policy.domains.is_empty());
    assert_eq!(packaged.server.hostname, Config::default().server.hostname);
    // Everything else is the annotated file's.
    let mut expected = annotated.clone();
    expected.policy.domains.clear();
    expected.server.hostname = packaged.server.hostname.clone();
    assert_eq!(packaged, expected);
    // The examples stay visible, as comments.
    assert!(text.contains("# hostname = \"relay.example.net\""));
    assert!(text.contains("# \"example.com\""));
}

/// The words of `Key=` lines of a unit file.
fn unit_words(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

#[test]
fn packaged_unit_runs_the_packaged_binary_on_the_packaged_paths() {
    let unit = packaged_unit(UNIT).expect("unit");
    assert_eq!(
        unit_words(&unit, "ExecStart"),
        [
            PACKAGED_BINARY,
            "run",
            "--config",
            "/etc/mxgate/mxgate.toml"
        ]
    );
    assert_eq!(unit.lines().count(), UNIT.lines().count());
    assert!(packaged_unit("[Service]\nExecStart=/bin/true\n").is_err());

    // The directories systemd creates are the ones the packaged configuration uses.
    let config =
        Config::from_toml_str(&packaged_config(ANNOTATED_CONFIG).expect("config")).expect("valid");
    let state: Vec<PathBuf> = unit_words(&unit, "StateDirectory")
        .iter()
        .map(|d| Path::new("/var/lib").join(d))
        .collect();
    let runtime: Vec<PathBuf> = unit_words(&unit, "RuntimeDirectory")
        .iter()
        .map(|d| Path::new("/run").join(d))
        .collect();
    assert!(state.contains(&config.queue.path), "{state:?}");
    assert!(state.contains(&config.policy.cache_path), "{state:?}");
    let socket_dir = config.control.socket.parent().expect("socket dir");
    assert!(runtime.iter().any(|d| d == socket_dir), "{runtime:?}");
    // The state directory is private to the service user (postinst makes it 0700 too).
    assert_eq!(unit_words(&unit, "StateDirectoryMode"), ["0700"]);
}

#[test]
fn completions_cover_every_subcommand() {
    let scripts = completions(&cli());
    assert_eq!(scripts.len(), 3);
    for (file, body) in &scripts {
        let body = String::from_utf8_lossy(body);
        // fish writes long options as `-l config`.
        for word in ["check-config", "queue", "flush", "config", "log-format"] {
            assert!(body.contains(word), "{file}: {word} missing");
        }
    }
}

/// Writes the package's generated files into `$MXGATE_ASSETS_DIR` (used by
/// `scripts/build-deb.sh`); without it, checks that they can be generated.
#[test]
fn write_package_assets() {
    let date = std::env::var("MXGATE_MAN_DATE").unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("mxgate.8", mxgate_8(&cli(), &date).into_bytes()),
        (
            "mxgate.toml.5",
            mxgate_toml_5(ANNOTATED_CONFIG, version, &date)
                .expect("mxgate.toml(5)")
                .into_bytes(),
        ),
        (
            "mxgate.toml",
            packaged_config(ANNOTATED_CONFIG)
                .expect("packaged config")
                .into_bytes(),
        ),
        (
            "mxgate.service",
            packaged_unit(UNIT).expect("packaged unit").into_bytes(),
        ),
    ];
    files.extend(completions(&cli()));
    let Some(dir) = std::env::var_os("MXGATE_ASSETS_DIR") else {
        assert!(files.iter().all(|(_, body)| !body.is_empty()));
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create MXGATE_ASSETS_DIR");
    for (name, body) in files {
        std::fs::write(dir.join(name), body).expect("write asset");
    }
}
