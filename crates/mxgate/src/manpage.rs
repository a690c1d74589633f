//! The files the Debian package installs besides the binary, generated from their
//! sources of truth so that they cannot drift (docs/packaging.md):
//!
//! - `mxgate(8)` from the clap definition in `cli.rs`, every subcommand with its
//!   arguments;
//! - `mxgate.toml(5)` from the annotated `etc/mxgate.toml`, every key with its comment;
//! - bash, zsh and fish completions from the same clap definition (`clap_complete`);
//! - the packaged `/etc/mxgate/mxgate.toml` (the annotated file without the example
//!   host name and example domains) and the packaged unit (`ExecStart` on
//!   `/usr/sbin/mxgate`).
//!
//! The functions are pure (text in, text out) and tested below. The binary does not
//! carry them: `scripts/build-deb.sh` runs the test `write_package_assets` with
//! `MXGATE_ASSETS_DIR` set, which writes the files there.

use std::fmt::Write as _;

use clap::{Arg, Command};

/// The annotated configuration, the source of `mxgate.toml(5)` and of the packaged
/// configuration file.
pub const ANNOTATED_CONFIG: &str = include_str!("../../../etc/mxgate.toml");
/// The unit for source installs (`/usr/local/bin`), the source of the packaged unit.
pub const UNIT: &str = include_str!("../../../systemd/mxgate.service");

/// Where the package installs the binary: a daemon and its administration commands,
/// documented in section 8, go to `/usr/sbin` (FHS 4.10, like postfix and unbound).
pub const PACKAGED_BINARY: &str = "/usr/sbin/mxgate";

/// Escapes text for a roff line: backslashes, and a leading `.` or `'` that roff would
/// read as a request. Backquoted words (`like this`) become bold.
fn roff_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut bold = false;
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '`' => {
                out.push_str(if bold { "\\fR" } else { "\\fB" });
                bold = !bold;
            }
            '-' => out.push_str("\\-"),
            _ => out.push(c),
        }
    }
    if bold {
        out.push_str("\\fR");
    }
    let mut lines = String::with_capacity(out.len());
    for (i, line) in out.split('\n').enumerate() {
        if i > 0 {
            lines.push('\n');
        }
        if line.starts_with('.') || line.starts_with('\'') {
            lines.push_str("\\&");
        }
        lines.push_str(line);
    }
    lines
}

/// A roff string argument for `.TH`/`.SS`: double quotes are not allowed inside.
fn roff_quoted(text: &str) -> String {
    format!("\"{}\"", roff_text(text).replace('"', "\\(dq"))
}

fn help_of(arg: &Arg) -> String {
    arg.get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// A help text as a sentence: clap's texts come without the final period.
fn sentence(text: &str) -> String {
    let text = text.trim();
    match text.chars().last() {
        None => String::new(),
        Some('.' | '!' | '?' | ':' | ')') => text.to_string(),
        Some(_) => format!("{text}."),
    }
}

fn about_of(cmd: &Command) -> String {
    cmd.get_long_about()
        .or(cmd.get_about())
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// Arguments a reader of the manual needs: not clap's own `--help`/`--version`.
fn documented_args(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
}

fn documented_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
}

fn value_name(arg: &Arg) -> String {
    match arg.get_value_names() {
        Some(names) if !names.is_empty() => names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        _ => arg.get_id().as_str().to_ascii_uppercase(),
    }
}

/// `\-\-config` \fIPATH\fR, `\fIDOMAIN\fR`: how an argument is written.
fn arg_form(arg: &Arg) -> String {
    if arg.is_positional() {
        return format!("\\fI{}\\fR", roff_text(&value_name(arg)));
    }
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(format!("\\fB\\-{short}\\fR"));
    }
    if let Some(long) = arg.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", roff_text(long)));
    }
    let mut form = names.join(", ");
    if arg.get_action().takes_values() {
        let _ = write!(form, " \\fI{}\\fR", roff_text(&value_name(arg)));
    }
    form
}

/// The synopsis word of an argument: `[--json]`, `ID`, `[ID]`, `[-c PATH]`.
fn synopsis_word(arg: &Arg) -> String {
    let word = if arg.is_positional() {
        format!("\\fI{}\\fR", roff_text(&value_name(arg)))
    } else {
        let name = match (arg.get_short(), arg.get_long()) {
            (Some(s), _) => format!("\\fB\\-{s}\\fR"),
            (None, Some(l)) => format!("\\fB\\-\\-{}\\fR", roff_text(l)),
            (None, None) => String::new(),
        };
        if arg.get_action().takes_values() {
            format!("{name} \\fI{}\\fR", roff_text(&value_name(arg)))
        } else {
            name
        }
    };
    if arg.is_required_set() {
        word
    } else {
        format!("[{word}]")
    }
}

/// The paragraph under an argument: its help, its choices, default and variable.
fn arg_paragraph(arg: &Arg) -> String {
    let mut text = roff_text(&sentence(&help_of(arg)));
    let choices: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("\\fB{}\\fR", roff_text(v.get_name())))
        .collect();
    if !choices.is_empty() {
        let _ = write!(text, " One of {}.", choices.join(", "));
    }
    // A flag's default ("false") says nothing.
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .filter(|_| arg.get_action().takes_values())
        .map(|v| roff_text(&v.to_string_lossy()))
        .collect();
    if !defaults.is_empty() {
        let _ = write!(text, " Default: \\fB{}\\fR.", defaults.join(" "));
    }
    text
}

fn push_command(out: &mut String, path: &str, cmd: &Command) {
    let mut synopsis = format!("\\fB{}\\fR", roff_text(path));
    for arg in documented_args(cmd) {
        synopsis.push(' ');
        synopsis.push_str(&synopsis_word(arg));
    }
    if documented_subcommands(cmd).next().is_some() {
        synopsis.push_str(" \\fIACTION\\fR");
    }
    let _ = writeln!(out, ".SS {}", roff_quoted(path));
    let _ = writeln!(out, "{synopsis}");
    let _ = writeln!(out, ".br");
    let _ = writeln!(out, "{}", roff_text(&sentence(&about_of(cmd))));
    // A positional argument without a help text is explained by the command's.
    let listed = |a: &&Arg| {
        let unexplained = a.is_positional() && help_of(a).is_empty();
        !a.is_global_set() && !unexplained
    };
    for arg in documented_args(cmd).filter(listed) {
        let _ = writeln!(out, ".TP");
        let _ = writeln!(out, "{}", arg_form(arg));
        let _ = writeln!(out, "{}", arg_paragraph(arg));
    }
    for sub in documented_subcommands(cmd) {
        push_command(out, &format!("{path} {}", sub.get_name()), sub);
    }
}

/// Every argument marked global somewhere below `cmd`, once each.
fn global_args(cmd: &Command) -> Vec<Arg> {
    let mut found: Vec<Arg> = Vec::new();
    let mut stack = vec![cmd];
    while let Some(c) = stack.pop() {
        for arg in documented_args(c).filter(|a| a.is_global_set()) {
            if !found.iter().any(|f| f.get_id() == arg.get_id()) {
                found.push(arg.clone());
            }
        }
        stack.extend(documented_subcommands(c));
    }
    found
}

/// `mxgate(8)`: the synopsis and description, every subcommand (recursively) with its
/// arguments, then what the clap definition cannot say (files, signals, exit status).
pub fn mxgate_8(cli: &Command, date: &str) -> String {
    let mut cmd = cli.clone();
    cmd.build();
    let name = cmd.get_name().to_string();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let mut out = String::new();
    let _ = writeln!(
        out,
        ".TH {} 8 {} {} {}",
        name.to_ascii_uppercase(),
        roff_quoted(date),
        roff_quoted(&format!("{name} {version}")),
        roff_quoted("System Administration")
    );
    let _ = writeln!(out, ".SH NAME");
    // NAME is one line (the short about); DESCRIPTION says the rest.
    let short = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    let _ = writeln!(out, "{name} \\- {}", roff_text(short.trim()));
    let _ = writeln!(out, ".SH SYNOPSIS");
    let _ = writeln!(
        out,
        "\\fB{name}\\fR \\fICOMMAND\\fR [\\fIARGUMENTS\\fR]\n.br\n\\fB{name} \\-\\-help\\fR | \\fB\\-\\-version\\fR"
    );
    out.push_str(DESCRIPTION_8);
    let _ = writeln!(out, ".SH COMMANDS");
    for sub in documented_subcommands(&cmd) {
        push_command(&mut out, &format!("{name} {}", sub.get_name()), sub);
    }
    let _ = writeln!(out, ".SH OPTIONS");
    let _ = writeln!(out, "Accepted by every command whose synopsis shows them:");
    for arg in global_args(&cmd) {
        let _ = writeln!(out, ".TP");
        let _ = writeln!(out, "{}", arg_form(&arg));
        let _ = writeln!(out, "{}", arg_paragraph(&arg));
    }
    let _ = writeln!(
        out,
        ".TP\n\\fB\\-h\\fR, \\fB\\-\\-help\\fR\nPrint the help of the command."
    );
    let _ = writeln!(
        out,
        ".TP\n\\fB\\-V\\fR, \\fB\\-\\-version\\fR\nPrint the version."
    );
    let mut env: Vec<(String, String)> = Vec::new();
    for arg in global_args(&cmd) {
        if let Some(var) = arg.get_env() {
            env.push((var.to_string_lossy().into_owned(), arg_form(&arg)));
        }
    }
    if !env.is_empty() {
        let _ = writeln!(out, ".SH ENVIRONMENT");
        for (var, form) in env {
            let _ = writeln!(
                out,
                ".TP\n\\fB{}\\fR\nThe value of {form} when it is not given.",
                roff_text(&var)
            );
        }
    }
    out.push_str(TRAILER_8);
    out
}

const DESCRIPTION_8: &str = r#".SH DESCRIPTION
\fBmxgate\fR is an outbound SMTP relay for a local MTA. Postfix hands it every
outbound message on 127.0.0.1:10025 (\fBrelayhost = [127.0.0.1]:10025\fR);
mxgate answers 250 only once the message is on stable storage, resolves the
recipient domain's MX hosts, decides which TLS level the destination requires
(none, may, encrypt, verify, MTA\-STS per RFC 8461, DANE per RFC 7672, or
\fBauto\fR: DANE where secure TLSA records exist, else MTA\-STS, else the
fallback) and delivers only when that level is met. Otherwise it defers, and
finally bounces with a DSN that says what failed.
.PP
\fBmxgate run\fR is the daemon, normally started by systemd
(\fBmxgate.service\fR). The other commands read the same configuration and
either inspect DNS and the policy, or talk to the running daemon through its
control socket.
"#;

const TRAILER_8: &str = r#".SH FILES
.TP
\fI/etc/mxgate/mxgate.toml\fR
The configuration, see \fBmxgate.toml\fR(5).
.TP
\fI/var/lib/mxgate/queue\fR
The spool (\fBqueue.path\fR).
.TP
\fI/var/lib/mxgate/policy\fR
Cached MTA\-STS policies (\fBpolicy.cache_path\fR).
.TP
\fI/run/mxgate/control.sock\fR
The control socket used by \fBmxgate queue\fR (\fBcontrol.socket\fR); its file
permissions are the access control.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the configuration file; an invalid file is reported and the running
configuration is kept.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting mail, let running deliveries finish, and exit.
.SH EXIT STATUS
0 on success; 1 when \fBmxgate check\fR or \fBmxgate policy\fR finds no policy
under which the domain would be delivered now, or when \fBmxgate queue\fR cannot
reach the daemon; 2 on an error before the command ran (an invalid configuration:
the message names the key or the file).
.SH SEE ALSO
\fBmxgate.toml\fR(5), \fBpostconf\fR(5), \fBsystemctl\fR(1),
\fI/usr/share/doc/mxgate/\fR (postfix.md, policy.md, operations.md).
"#;

/// One `key = value` of the annotated file with the comment lines above it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    key: String,
    value: String,
    comment: Vec<String>,
}

/// One `[table]` of the annotated file.
#[derive(Debug, Clone, PartialEq)]
struct Table {
    name: String,
    /// Comment lines directly above the `[table]` line.
    comment: Vec<String>,
    entries: Vec<Entry>,
}

/// The annotated file as the header comment and its tables, in file order.
#[derive(Debug, Clone, PartialEq)]
struct Annotated {
    header: Vec<String>,
    tables: Vec<Table>,
}

/// Why the annotated file could not be read as `# comment` / `[table]` / `key = value`
/// lines: the line number and the line.
#[derive(Debug, thiserror::Error)]
#[error("etc/mxgate.toml line {line}: {message}: {text:?}")]
pub struct AnnotatedError {
    line: usize,
    message: &'static str,
    text: String,
}

fn bracket_depth(text: &str) -> i32 {
    let mut depth = 0;
    let mut in_string = false;
    for c in text.chars() {
        match c {
            '"' => in_string = !in_string,
            '[' | '{' if !in_string => depth += 1,
            ']' | '}' if !in_string => depth -= 1,
            _ => {}
        }
    }
    depth
}

fn parse_annotated(text: &str) -> Result<Annotated, AnnotatedError> {
    let mut header = Vec::new();
    let mut tables: Vec<Table> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    let mut in_header = true;
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let line = raw.trim();
        let error = |message| AnnotatedError {
            line: i + 1,
            message,
            text: raw.to_string(),
        };
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            if in_header {
                header.push(comment.to_string());
            } else {
                pending.push(comment.to_string());
            }
        } else if line.is_empty() {
            if in_header && !header.is_empty() {
                in_header = false;
            }
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_header = false;
            tables.push(Table {
                name: name.trim().to_string(),
                comment: std::mem::take(&mut pending),
                entries: Vec::new(),
            });
        } else if let Some((key, value)) = line.split_once('=') {
            let table = tables
                .last_mut()
                .ok_or_else(|| error("a key before the first [table]"))?;
            let mut value = value.trim().to_string();
            // A value may continue over lines until its brackets close.
            while bracket_depth(&value) > 0 {
                let (_, next) = lines.next().ok_or_else(|| error("unclosed value"))?;
                value.push(' ');
                value.push_str(next.trim());
            }
            table.entries.push(Entry {
                key: key.trim().to_string(),
                value,
                comment: std::mem::take(&mut pending),
            });
        } else {
            return Err(error("neither a comment, a [table] nor key = value"));
        }
    }
    Ok(Annotated { header, tables })
}

/// Keys of `[policy.domains]` are destinations, not configuration keys: that table is
/// shown as an example.
fn is_example_table(table: &Table) -> bool {
    table.name == "policy.domains"
}

fn paragraph(comment: &[String]) -> String {
    roff_text(&comment.join("\n"))
}

/// `mxgate.toml(5)`: every key of the annotated configuration with its comment.
pub fn mxgate_toml_5(annotated: &str, version: &str, date: &str) -> Result<String, AnnotatedError> {
    let doc = parse_annotated(annotated)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        ".TH MXGATE.TOML 5 {} {} {}",
        roff_quoted(date),
        roff_quoted(&format!("mxgate {version}")),
        roff_quoted("File Formats")
    );
    let _ = writeln!(
        out,
        ".SH NAME\nmxgate.toml \\- configuration of the mxgate SMTP relay"
    );
    let _ = writeln!(out, ".SH SYNOPSIS\n\\fI/etc/mxgate/mxgate.toml\\fR");
    let _ = writeln!(out, ".SH DESCRIPTION");
    // The header's first line is the file's title; the rest is the description.
    let _ = writeln!(
        out,
        "{}",
        paragraph(doc.header.get(1..).unwrap_or_default())
    );
    let _ = writeln!(out, ".PP\nThe value after each key below is its built\\-in default, unless the text says otherwise. \\fBmxgate run\\fR rereads the file on \\fBSIGHUP\\fR (\\fBsystemctl reload mxgate\\fR).");
    for table in &doc.tables {
        let _ = writeln!(out, ".SH {}", roff_quoted(&format!("[{}]", table.name)));
        if !table.comment.is_empty() {
            let _ = writeln!(out, "{}", paragraph(&table.comment));
        }
        if is_example_table(table) {
            let _ = writeln!(out, ".PP\nFor example:\n.PP\n.RS\n.nf");
            for entry in &table.entries {
                let _ = writeln!(
                    out,
                    "{} = {}",
                    roff_text(&entry.key),
                    roff_text(&entry.value)
                );
            }
            let _ = writeln!(out, ".fi\n.RE");
            continue;
        }
        // A key without a comment of its own shares the one above it (written as
        // consecutive keys under one comment, like `command_timeout`/`data_timeout`).
        let mut i = 0;
        while i < table.entries.len() {
            let group_end = table.entries[i + 1..]
                .iter()
                .position(|e| !e.comment.is_empty())
                .map_or(table.entries.len(), |p| i + 1 + p);
            for (n, entry) in table.entries[i..group_end].iter().enumerate() {
                let _ = writeln!(out, "{}", if n == 0 { ".TP" } else { ".TQ" });
                let _ = writeln!(
                    out,
                    "\\fB{}.{}\\fR = {}",
                    roff_text(&table.name),
                    roff_text(&entry.key),
                    roff_text(&entry.value)
                );
            }
            let _ = writeln!(out, "{}", paragraph(&table.entries[i].comment));
            i = group_end;
        }
    }
    let _ = writeln!(out, ".SH FILES\n\\fI/etc/mxgate/mxgate.toml\\fR, installed by the package; \\fI/usr/share/doc/mxgate/\\fR.");
    let _ = writeln!(out, ".SH SEE ALSO\n\\fBmxgate\\fR(8), \\fBpostconf\\fR(5)");
    Ok(out)
}

/// The configuration the package installs as `/etc/mxgate/mxgate.toml`: the annotated
/// file with the example `server.hostname` and the example `[policy.domains]` entries
/// commented out, so that a fresh install uses `/etc/mailname` and the global policy.
pub fn packaged_config(annotated: &str) -> Result<String, AnnotatedError> {
    // Parse first so that a file this function cannot understand fails loudly.
    parse_annotated(annotated)?;
    let mut out = String::from(
        "# Installed by the mxgate package. Your changes are kept on upgrade (a conffile).\n\
         # The keys are described in mxgate.toml(5).\n",
    );
    let mut table = String::new();
    for line in annotated.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.trim().to_string();
        }
        let is_key = !trimmed.starts_with('#') && trimmed.contains('=');
        let key = trimmed.split('=').next().unwrap_or_default().trim();
        let example =
            is_key && ((table == "server" && key == "hostname") || table == "policy.domains");
        if example {
            out.push_str("# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// Why the unit could not be adapted to the package.
#[derive(Debug, thiserror::Error)]
#[error("systemd/mxgate.service: no ExecStart= running mxgate")]
pub struct UnitError;

/// The unit the package installs: `ExecStart=` runs the packaged binary.
pub fn packaged_unit(unit: &str) -> Result<String, UnitError> {
    let mut found = false;
    let mut out = String::with_capacity(unit.len());
    for line in unit.lines() {
        let rewritten = line.strip_prefix("ExecStart=").and_then(|cmd| {
            let (program, args) = cmd.split_once(' ').unwrap_or((cmd, ""));
            program
                .ends_with("/mxgate")
                .then(|| format!("ExecStart={PACKAGED_BINARY} {args}"))
        });
        match rewritten {
            Some(l) => {
                found = true;
                out.push_str(l.trim_end());
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    if found {
        Ok(out)
    } else {
        Err(UnitError)
    }
}

/// The completion scripts: (file name under the asset directory, contents).
pub fn completions(cli: &Command) -> Vec<(&'static str, Vec<u8>)> {
    use clap_complete::Shell;
    [
        (Shell::Bash, "mxgate.bash"),
        (Shell::Zsh, "_mxgate"),
        (Shell::Fish, "mxgate.fish"),
    ]
    .into_iter()
    .map(|(shell, file)| {
        let mut cmd = cli.clone();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, "mxgate", &mut buf);
        (file, buf)
    })
    .collect()
}

#[cfg(test)]
#[path = "manpage_tests.rs"]
mod tests;
