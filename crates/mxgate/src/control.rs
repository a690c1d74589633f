//! The control socket (`control.socket`) behind `mxgate queue ...`.
//!
//! A Unix stream socket; its file permissions (0660, the daemon's user and group) are
//! the access control. One request per connection, one JSON line each way:
//!
//! ```text
//! → {"command":"list"}            ← {"ok":true,"messages":[...]}
//! → {"command":"show","id":"…"}   ← {"ok":true,"message":{...}}
//! → {"command":"flush","id":null} ← {"ok":true,"count":3}
//! → {"command":"delete","id":"…"} ← {"ok":true}
//! → {"command":"bounce","id":"…"} ← {"ok":true,"count":2}
//! → {"command":"tlsrpt-list"}     ← {"ok":true,"tlsrpt":{...}}
//! → {"command":"tlsrpt-send"}     ← {"ok":true,"tlsrpt":{"results":[...]}}
//! ← {"ok":false,"error":"no message ABC in the queue"}
//! ```
//!
//! The server only translates requests into [`Queue`] calls; it holds no state.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mxgate_queue::{Queue, QueueId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// The largest request line accepted (ids are short; this is generous).
const MAX_REQUEST: usize = 4096;

/// One request.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    List,
    Show {
        id: String,
    },
    Flush {
        id: Option<String>,
    },
    Delete {
        id: String,
    },
    Bounce {
        id: String,
    },
    #[serde(rename = "tlsrpt-list")]
    TlsrptList,
    #[serde(rename = "tlsrpt-send")]
    TlsrptSend,
}

/// What the control socket serves.
#[derive(Clone)]
pub struct Served {
    pub queue: Arc<Queue>,
    /// `None` when `tlsrpt.enabled = false`.
    pub tlsrpt: Option<mxgate_tlsrpt::TlsRpt>,
}

/// Binds `path` (replacing a stale socket) with mode 0660.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serves requests until `shutdown`.
pub async fn serve(listener: UnixListener, served: Served, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    continue;
                }
            },
        };
        let served = served.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &served).await {
                tracing::debug!(error = %e, "control connection failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, served: &Served) -> io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut limited = (&mut stream).take(MAX_REQUEST as u64);
        limited.read_line(&mut line).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "control request timeout"))??;
    let response = if read == 0 {
        return Ok(());
    } else {
        match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => execute(request, served).await,
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    stream.get_mut().write_all(&out).await?;
    stream.get_mut().shutdown().await
}

use tokio::io::AsyncReadExt;

async fn execute(request: Request, served: &Served) -> Value {
    let queue = &served.queue;
    let result: Result<Value, String> = match request {
        Request::TlsrptList | Request::TlsrptSend => {
            let Some(tlsrpt) = &served.tlsrpt else {
                return json!({"ok": false, "error": "TLS reporting is off (tlsrpt.enabled = false)"});
            };
            let answer = match request {
                Request::TlsrptList => tlsrpt.list().await.map(|v| json!(v)),
                _ => tlsrpt.send_now().await.map(|v| json!(v)),
            };
            answer
                .map(|v| json!({ "tlsrpt": v }))
                .map_err(|e| e.to_string())
        }
        Request::List => Ok(json!({"messages": queue.list()})),
        Request::Show { id } => match queue.show(&QueueId(id.clone())) {
            Some(message) => Ok(json!({ "message": message })),
            None => Err(format!("no message {id} in the queue")),
        },
        Request::Flush { id } => {
            let id = id.map(QueueId);
            queue
                .flush(id.as_ref())
                .map(|count| json!({ "count": count }))
                .map_err(|e| e.to_string())
        }
        Request::Delete { id } => queue
            .delete(&QueueId(id))
            .await
            .map(|()| json!({}))
            .map_err(|e| e.to_string()),
        Request::Bounce { id } => queue
            .bounce(&QueueId(id))
            .await
            .map(|count| json!({ "count": count }))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(Value::Object(mut map)) => {
            map.insert("ok".into(), Value::Bool(true));
            Value::Object(map)
        }
        Ok(other) => json!({"ok": true, "result": other}),
        Err(error) => json!({"ok": false, "error": error}),
    }
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach mxgate at {path}: {source} (is `mxgate run` running, and may you use its control socket?)")]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket I/O: {0}")]
    Io(#[from] io::Error),
    #[error("malformed answer from mxgate: {0}")]
    Malformed(String),
    #[error("{0}")]
    Refused(String),
}

/// Client side: sends one request, returns the answer object (without `ok`).
pub async fn call(path: &Path, request: &Request) -> Result<Value, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let mut stream = BufReader::new(stream);
    let mut out = serde_json::to_vec(request).map_err(io::Error::other)?;
    out.push(b'\n');
    stream.get_mut().write_all(&out).await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let value: Value =
        serde_json::from_str(line.trim()).map_err(|e| ControlError::Malformed(e.to_string()))?;
    match value.get("ok") {
        Some(Value::Bool(true)) => Ok(value),
        Some(Value::Bool(false)) => Err(ControlError::Refused(
            value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string(),
        )),
        _ => Err(ControlError::Malformed(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let cases = [
            (Request::List, r#"{"command":"list"}"#),
            (
                Request::Show { id: "AB12".into() },
                r#"{"command":"show","id":"AB12"}"#,
            ),
            (
                Request::Flush { id: None },
                r#"{"command":"flush","id":null}"#,
            ),
            (
                Request::Delete { id: "AB12".into() },
                r#"{"command":"delete","id":"AB12"}"#,
            ),
            (
                Request::Bounce { id: "AB12".into() },
                r#"{"command":"bounce","id":"AB12"}"#,
            ),
            (Request::TlsrptList, r#"{"command":"tlsrpt-list"}"#),
            (Request::TlsrptSend, r#"{"command":"tlsrpt-send"}"#),
        ];
        for (request, wire) in cases {
            assert_eq!(serde_json::to_string(&request).expect("serialise"), wire);
            assert_eq!(
                serde_json::from_str::<Request>(wire).expect("parse"),
                request
            );
        }
        assert!(serde_json::from_str::<Request>(r#"{"command":"format-disk"}"#).is_err());
    }
}
