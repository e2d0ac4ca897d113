//! A headless Chromium driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: commands in on fd 3, answers out on fd 4, each
//! a JSON text ended by NUL), for the tests that click: open a page, fill and
//! submit a form, click a button, read the DOM as the page's own scripts left
//! it. Every wait has a deadline; `Drop` closes the browser and reaps it.

use super::{wait_for, Proc, DEADLINE};
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{channel, Receiver};
use std::time::Instant;

pub struct Browser {
    _proc: Proc,
    commands: File,
    answers: Receiver<Value>,
    session: String,
    next: u64,
}

impl Browser {
    /// A fresh browser (its own profile under `dir`: cookies start empty) on about:blank.
    pub fn start(dir: &Path) -> Browser {
        let (to, from) = (dir.join("cdp-in"), dir.join("cdp-out"));
        for fifo in [&to, &from] {
            let _ = std::fs::remove_file(fifo);
            let ok = Command::new("mkfifo").arg(fifo).status().expect("mkfifo");
            assert!(ok.success(), "mkfifo {}", fifo.display());
        }
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg("exec chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=\"$1/chromium-profile\" --remote-debugging-pipe about:blank 3<\"$1/cdp-in\" 4>\"$1/cdp-out\"")
            .arg("browser")
            .arg(dir);
        let proc = Proc::spawn("chromium", cmd, dir.join("chromium.out"), dir.join("chromium.err"));
        // Opening a FIFO waits for its other end: the shell opens them in this order.
        let commands = File::options().write(true).open(&to).expect("the DevTools command pipe");
        let out = File::open(&from).expect("the DevTools answer pipe");
        let (send, answers) = channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(out);
            let mut buf = Vec::new();
            while matches!(out.read_until(0, &mut buf), Ok(n) if n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if send.send(v).is_err() {
                        break;
                    }
                }
                buf.clear();
            }
        });
        let mut b = Browser { _proc: proc, commands, answers, session: String::new(), next: 0 };
        let targets = b.call("Target.getTargets", json!({}));
        let page = targets["targetInfos"].as_array().and_then(|t| t.iter().find(|t| t["type"] == "page")).expect("a page target").clone();
        let attached = b.call("Target.attachToTarget", json!({ "targetId": page["targetId"], "flatten": true }));
        b.session = attached["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    /// Sends one command (to the page once attached) and returns its result; panics on an error answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params).unwrap_or_else(|e| panic!("DevTools {method}: {e}"))
    }

    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.commands.write_all(&bytes).map_err(|e| format!("write: {e}"))?;
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let answer = self.answers.recv_timeout(left).map_err(|e| format!("no answer within {DEADLINE:?}: {e}"))?;
            if answer["id"] == json!(id) {
                return match answer.get("error") {
                    Some(e) => Err(e.to_string()),
                    None => Ok(answer["result"].clone()),
                };
            }
        }
    }

    /// The value of a JS expression in the page (awaited when a promise); an error while the
    /// page is being replaced is `Err`.
    pub fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self.try_call("Runtime.evaluate", json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }))?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(e.to_string());
        }
        Ok(r["result"]["value"].clone())
    }

    pub fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression).unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// Opens `url` and waits until it has loaded.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_else(|| "/".into());
        self.wait_loaded(&path);
    }

    /// Waits until the page at `path` (path and query) has loaded.
    pub fn wait_loaded(&mut self, path: &str) {
        wait_for(&format!("the browser to load {path}"), DEADLINE, || {
            let now = self.try_eval("document.readyState + ' ' + location.pathname + location.search")?;
            if now == json!(format!("complete {path}")) {
                Ok(())
            } else {
                Err(now.to_string())
            }
        });
    }

    /// Waits until the loaded page's path starts with `prefix`; returns the path.
    pub fn wait_path(&mut self, prefix: &str) -> String {
        wait_for(&format!("the browser to reach {prefix}…"), DEADLINE, || {
            let now = self.try_eval("document.readyState + ' ' + location.pathname")?;
            match now.as_str().and_then(|s| s.strip_prefix("complete ")) {
                Some(p) if p.starts_with(prefix) => Ok(p.to_string()),
                _ => Err(now.to_string()),
            }
        })
    }

    /// The page's DOM as HTML now.
    pub fn html(&mut self) -> String {
        self.eval("document.documentElement.outerHTML").as_str().unwrap_or_default().to_string()
    }

    /// Clicks the first element matching `selector`, as a user would (a form's button submits it).
    pub fn click(&mut self, selector: &str) {
        let js =
            format!("(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true }})()", json!(selector));
        assert_eq!(self.eval(&js), json!(true), "nothing to click at {selector}:\n{}", self.html());
    }

    /// A PNG of the page as shown `width` × `height` CSS pixels, written to `path`.
    pub fn screenshot(&mut self, width: u32, height: u32, path: &Path) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        std::fs::write(path, png).unwrap();
    }

    /// Fills the input matching `selector` with `value`.
    pub fn fill(&mut self, selector: &str, value: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.value = {}; return true }})()",
            json!(selector),
            json!(value)
        );
        assert_eq!(self.eval(&js), json!(true), "no input at {selector}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.session.clear();
        let _ = self.try_call("Browser.close", json!({}));
    }
}

/// Standard base64 (the screenshot's encoding), padding ignored.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
