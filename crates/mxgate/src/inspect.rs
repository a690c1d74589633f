//! The client commands: `mxgate policy DOMAIN` and `mxgate queue ...`.
//!
//! `policy` runs the same policy engine as the daemon (same DNS, same cache
//! directory, read-only use) and prints its explanation. `queue` talks to the running
//! daemon over the control socket.

use std::process::ExitCode;
use std::sync::Arc;

use mxgate_config::Config;
use mxgate_dns::DnsClient;
use mxgate_policy::{CacheWrite, PolicyEngine};
use mxgate_smtp::date::UtcDateTime;
use serde_json::Value;

use crate::cli::{QueueAction, TlsRptAction};
use crate::control::{self, Request};
use crate::error::CliError;

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `mxgate policy DOMAIN [--json] [--refresh]`: exit 0 when the verdict is deliver, 1
/// when mail would be deferred or bounced (the explanation is printed either way).
pub fn policy(
    config: Config,
    domain: &str,
    json: bool,
    write: CacheWrite,
) -> Result<ExitCode, CliError> {
    let config = Arc::new(config);
    runtime()?.block_on(async move {
        let dns = Arc::new(
            DnsClient::new(&config.dns).map_err(|e| CliError::Startup(format!("dns: {e}")))?,
        );
        resolver_self_test(&dns).await;
        let engine = PolicyEngine::new(config.clone(), dns)
            .map_err(|e| CliError::Startup(format!("policy: {e}")))?;
        let explanation = engine.explain(domain, write).await;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&explanation)
                    .map_err(|e| CliError::Startup(e.to_string()))?
            );
        } else {
            let value =
                serde_json::to_value(&explanation).map_err(|e| CliError::Startup(e.to_string()))?;
            print!("{}", explanation_text(&value));
        }
        Ok(if explanation.deliverable {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

/// The resolver self-test, as the daemon runs it at start (docs/operations.md): a
/// resolver that cannot validate is then named as the cause of DNSSEC failures, not the
/// destination, and the failure is printed on stderr with its fix.
pub(crate) async fn resolver_self_test(dns: &DnsClient) {
    match dns.self_test().await {
        mxgate_dns::SelfTest::NotValidating { seen, fix } => {
            eprintln!("mxgate: resolver self-test failed: {seen}; fix: {fix}")
        }
        mxgate_dns::SelfTest::LookupFailed { detail } => {
            eprintln!("mxgate: resolver self-test failed: {detail}")
        }
        mxgate_dns::SelfTest::Validates | mxgate_dns::SelfTest::Skipped => {}
    }
}

/// `mxgate queue ACTION`.
pub fn queue(socket: &std::path::Path, action: QueueAction) -> Result<ExitCode, CliError> {
    let (request, json) = match action {
        QueueAction::List { json } => (Request::List, json),
        QueueAction::Show { id } => (Request::Show { id }, true),
        QueueAction::Flush { id } => (Request::Flush { id }, false),
        QueueAction::Delete { id } => (Request::Delete { id }, false),
        QueueAction::Bounce { id } => (Request::Bounce { id }, false),
    };
    let answer = runtime()?.block_on(async { control::call(socket, &request).await });
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("mxgate: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let print_json = |v: &Value| {
        println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
    };
    match request {
        Request::List if json => print_json(answer.get("messages").unwrap_or(&Value::Null)),
        Request::List => print_list(answer.get("messages").unwrap_or(&Value::Null)),
        Request::Show { .. } => print_json(answer.get("message").unwrap_or(&Value::Null)),
        Request::Flush { .. } => println!(
            "{} recipient(s) scheduled for immediate delivery",
            answer.get("count").and_then(Value::as_u64).unwrap_or(0)
        ),
        Request::Delete { id } => println!("{id}: deleted"),
        Request::Bounce { id } => println!(
            "{id}: {} recipient(s) bounced",
            answer.get("count").and_then(Value::as_u64).unwrap_or(0)
        ),
        Request::TlsrptList | Request::TlsrptSend => print_json(&answer),
    }
    Ok(ExitCode::SUCCESS)
}

/// `mxgate tlsrpt list|send`.
pub fn tlsrpt(socket: &std::path::Path, action: TlsRptAction) -> Result<ExitCode, CliError> {
    let (request, json) = match action {
        TlsRptAction::List { json } => (Request::TlsrptList, json),
        TlsRptAction::Send => (Request::TlsrptSend, false),
    };
    let answer = match runtime()?.block_on(async { control::call(socket, &request).await }) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("mxgate: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let body = answer.get("tlsrpt").cloned().unwrap_or(Value::Null);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_else(|_| body.to_string())
        );
        return Ok(ExitCode::SUCCESS);
    }
    match request {
        Request::TlsrptSend => {
            let results = body
                .get("results")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if results.is_empty() {
                println!("no sessions counted: no report to send");
            }
            let mut failed = false;
            for r in &results {
                let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                failed |= s("result") == "failed";
                let error = s("error");
                println!(
                    "{} {} {}{}",
                    s("policy_domain"),
                    s("result"),
                    s("destination"),
                    if error.is_empty() {
                        String::new()
                    } else {
                        format!(" ({error})")
                    }
                );
            }
            return Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        _ => print_tlsrpt_list(&body),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_tlsrpt_list(body: &Value) {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    println!(
        "period {} to {}",
        s(body, "period_start"),
        s(body, "period_end")
    );
    for report in body
        .get("domains")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in report
            .get("policies")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let policy = &p["policy"];
            let summary = &p["summary"];
            println!(
                "{} {} success={} failure={}",
                s(policy, "policy-domain"),
                s(policy, "policy-type"),
                summary["total-successful-session-count"],
                summary["total-failure-session-count"],
            );
            for f in p
                .get("failure-details")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!(
                    "    {} mx={} ip={} count={}",
                    s(f, "result-type"),
                    s(f, "receiving-mx-hostname"),
                    s(f, "receiving-ip"),
                    f["failed-session-count"]
                );
            }
        }
    }
    for p in body
        .get("pending")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "pending: {} report {} next try {} (attempt {})",
            s(p, "policy_domain"),
            s(p, "report_id"),
            s(p, "next_try"),
            p["attempts"]
        );
    }
}

/// A `postqueue -p`-like listing.
fn print_list(messages: &Value) {
    let Some(messages) = messages.as_array() else {
        println!("Mail queue is empty");
        return;
    };
    if messages.is_empty() {
        println!("Mail queue is empty");
        return;
    }
    println!(
        "{:<20} {:>9} {:<20} Sender/Recipient",
        "Queue ID", "Size", "Arrival Time (UTC)"
    );
    for m in messages {
        let field = |k: &str| m.get(k).cloned().unwrap_or(Value::Null);
        let sender = field("sender");
        let sender = sender.as_str().filter(|s| !s.is_empty()).unwrap_or("<>");
        println!(
            "{:<20} {:>9} {:<20} {}",
            field("id").as_str().unwrap_or("?"),
            field("size").as_u64().unwrap_or(0),
            field("arrival")
                .as_u64()
                .map_or_else(|| "?".into(), postqueue_date),
            sender
        );
        for r in field("recipients").as_array().into_iter().flatten() {
            let address = r.get("address").and_then(Value::as_str).unwrap_or("?");
            let state = r.get("state").map(|s| match s {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            let attempts = r.get("attempts").and_then(Value::as_u64).unwrap_or(0);
            let next = r
                .get("next_attempt")
                .and_then(Value::as_u64)
                .map(|t| format!(", next attempt {}", postqueue_date(t)))
                .unwrap_or_default();
            println!(
                "{:<52}{address} ({}, {attempts} attempt(s){next})",
                "",
                state.unwrap_or_default()
            );
            if let Some(err) = r.get("last_error").filter(|e| !e.is_null()) {
                let diag = err.get("diagnostic").and_then(Value::as_str).unwrap_or("");
                println!("{:<56}({diag})", "");
            }
        }
    }
}

/// Unix seconds as `postqueue -p` prints an arrival time (`Fri Dec  4 02:47:35`), in UTC
/// so that every instance and the log agree.
fn postqueue_date(unix: u64) -> String {
    let t = UtcDateTime::from_unix(i64::try_from(unix).unwrap_or(i64::MAX));
    format!(
        "{} {} {:>2} {}",
        t.weekday_name(),
        t.month_name(),
        t.day,
        t.time_of_day()
    )
}

/// The human form of `mxgate policy DOMAIN`, from the same fields as `--json`.
fn explanation_text(v: &Value) -> String {
    use std::fmt::Write;
    let s = |v: &Value, k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "domain:  {}", s(v, "domain"));
    let _ = writeln!(
        out,
        "level:   {} (source: {}, configured: {}, shadow: {}, min TLS {})",
        s(v, "level"),
        s(v, "source"),
        s(v, "configured_level"),
        s(v, "shadow"),
        s(v, "min_tls_version")
    );
    let _ = writeln!(out, "dnssec:  {} (MX records)", s(v, "dnssec"));
    let _ = writeln!(out, "verdict: {}", s(v, "verdict"));
    for mx in v.get("mx").and_then(Value::as_array).into_iter().flatten() {
        let _ = writeln!(
            out,
            "mx:      {} (pref {}) dnssec={} address={} tlsa={} ({}) -> {}",
            s(mx, "host"),
            s(mx, "preference"),
            s(mx, "dnssec"),
            s(mx, "address_dnssec"),
            s(mx, "tlsa_dnssec"),
            s(mx, "tlsa_state"),
            s(mx, "requirement")
        );
        for addr in mx
            .get("addrs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let _ = writeln!(out, "           address {}", addr.as_str().unwrap_or("?"));
        }
        // RFC 7672 §2.2.3: TLSA looked up at the name a secure CNAME chain led to.
        if let Some(base) = mx.get("tlsa_base").and_then(Value::as_str) {
            if Some(base) != mx.get("host").and_then(Value::as_str) {
                let _ = writeln!(out, "           TLSA base {base} (secure CNAME)");
            }
        }
        for t in mx
            .get("tlsa")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let _ = writeln!(out, "           TLSA {}", t.as_str().unwrap_or("?"));
        }
    }
    match v.get("mta_sts") {
        Some(sts) if !sts.is_null() => {
            let _ = writeln!(
                out,
                "mta-sts: mode={} id={} max_age={} fetched_at={} mx={}",
                s(sts, "mode"),
                s(sts, "id"),
                s(sts, "max_age"),
                s(sts, "fetched_at"),
                sts.get("mx").map(Value::to_string).unwrap_or_default()
            );
        }
        _ => {
            let _ = writeln!(out, "mta-sts: none");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::postqueue_date;

    #[test]
    fn dates_read_like_postqueue() {
        assert_eq!(postqueue_date(0), "Thu Jan  1 00:00:00");
        // 2026-12-04T02:47:35Z, a Friday.
        assert_eq!(postqueue_date(1_796_352_455), "Fri Dec  4 02:47:35");
        // 2024-02-29T23:59:59Z, a leap day.
        assert_eq!(postqueue_date(1_709_251_199), "Thu Feb 29 23:59:59");
        // 2000-03-01T12:00:00Z.
        assert_eq!(postqueue_date(951_912_000), "Wed Mar  1 12:00:00");
    }
}
