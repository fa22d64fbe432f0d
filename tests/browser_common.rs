//! Shared by the browser tests (tests/report_browser.rs) and the report benchmark
//! (benches/report_html.rs): Debian's headless chromium driven through chromedriver's W3C
//! WebDriver HTTP API (https://www.w3.org/TR/webdriver2/), spoken with ureq and serde_json.
//!
//! Both programs come from `scripts/install-browser.sh` (Debian's `chromium` and
//! `chromium-driver`; `ICET_CHROMIUM` / `ICET_CHROMEDRIVER` override the paths). Without them a
//! test is skipped, visibly: `SKIPPED <test>: <reason>` straight to stderr (libtest would swallow
//! a captured `eprintln!`). In CI (`ICET_REQUIRE_BROWSER=1`, set by .ci/run, or `CI`) a missing
//! browser fails the test instead, so CI can never pass by skipping.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "skip_note.rs"]
mod skip_note;

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether a missing browser is a failure (CI) rather than a skip.
pub fn browser_required() -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
    set("ICET_REQUIRE_BROWSER") || set("CI")
}

/// Reports that `test` is skipped because of `reason`, or fails it where a browser is required.
pub fn skip(test: &str, reason: &str) {
    if browser_required() {
        panic!("{test}: a browser is required here (ICET_REQUIRE_BROWSER or CI is set) but {reason}");
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "SKIPPED {test}: {reason}");
    skip_note::record(reason);
}

/// The file `env` names, else the first of `names` on PATH; or why there is none.
fn program(env: &str, names: &[&str], install: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("{env}={} is not a file", p.display())) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no {} on PATH ({install})", names[0]))
}

/// A WebDriver error: its `error` code (e.g. `no such alert`) and message.
#[derive(Debug)]
pub struct WebDriverError {
    pub error: String,
    pub message: String,
}

/// An element on the page (a WebDriver element reference).
#[derive(Clone, Debug)]
pub struct Element(pub String);

impl Element {
    pub fn json(&self) -> Value {
        json!({ ELEMENT: self.0 })
    }
}

/// One chromedriver with one browser session, closed (and its profile removed) on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    profile: PathBuf,
}

impl Browser {
    /// A fresh headless chromium, or `None` after reporting why `test` is skipped.
    pub fn start(test: &str) -> Option<Browser> {
        let install = "scripts/install-browser.sh installs Debian's chromium and chromium-driver";
        let found = program("ICET_CHROMIUM", &["chromium", "chromium-browser"], install)
            .and_then(|c| Ok((c, program("ICET_CHROMEDRIVER", &["chromedriver"], install)?)));
        let (chromium, chromedriver) = match found {
            Ok(both) => both,
            Err(why) => {
                skip(test, &why);
                return None;
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let profile = std::env::temp_dir().join(format!("icet-browser-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(profile.join("chromedriver.log")).unwrap();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("{test}: cannot start {}: {e}", chromedriver.display()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(180)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut b =
            Browser { driver, base: format!("http://127.0.0.1:{port}"), session: String::new(), agent, profile };
        let started = Instant::now();
        while b.call("GET", "/status", None).ok().and_then(|v| v["ready"].as_bool()) != Some(true) {
            assert!(started.elapsed() < Duration::from_secs(30), "{test}: chromedriver not ready after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        // As root chromium needs --no-sandbox; the rest keeps it off the (closed) network.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", b.profile.join("profile").display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // Leave alerts open, so that a test sees one rather than chromedriver dismissing it.
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let session = b.call("POST", "/session", Some(caps)).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(b.profile.join("chromedriver.log")).unwrap_or_default();
            panic!("{test}: chromium did not start: {e:?}\n{log}")
        });
        b.session = session["sessionId"].as_str().expect("a session id").to_string();
        b.call_session("POST", "/timeouts", json!({"script": 120_000, "pageLoad": 120_000})).unwrap();
        Some(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string().as_str()),
        };
        let mut response = response
            .map_err(|e| WebDriverError { error: "transport".into(), message: format!("{method} {path}: {e}") })?;
        let text = response.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).map_err(|e| WebDriverError {
            error: "bad response".into(),
            message: format!("{method} {path}: {e}: {}", text.chars().take(300).collect::<String>()),
        })?;
        let value = v["value"].clone();
        match value["error"].as_str() {
            Some(error) => Err(WebDriverError {
                error: error.to_string(),
                message: value["message"].as_str().unwrap_or_default().to_string(),
            }),
            None => Ok(value),
        }
    }

    fn call_session(&self, method: &str, path: &str, body: Value) -> Result<Value, WebDriverError> {
        self.call(method, &format!("/session/{}{path}", self.session), Some(body))
    }

    fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        self.call_session(method, path, body).unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e:?}"))
    }

    /// Opens `url` and waits for its load event.
    pub fn goto(&self, url: &str) {
        self.ok("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub fn exec(&self, script: &str, args: Vec<Value>) -> Value {
        self.ok("POST", "/execute/sync", json!({"script": script, "args": args}))
    }

    /// As [`Browser::exec`], for a body that ends by calling `arguments[arguments.length - 1](value)`.
    pub fn exec_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.ok("POST", "/execute/async", json!({"script": script, "args": args}))
    }

    /// Runs `script` where an alert may be open: the WebDriver error, if any.
    pub fn try_exec(&self, script: &str) -> Result<Value, WebDriverError> {
        self.call_session("POST", "/execute/sync", json!({"script": script, "args": []}))
    }

    /// A Chrome DevTools protocol command (chromedriver's `goog/cdp/execute`).
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.ok("POST", "/goog/cdp/execute", json!({"cmd": cmd, "params": params}))
    }

    /// Polls the expression `condition` until it is true.
    pub fn wait_for(&self, condition: &str, timeout: Duration) {
        let started = Instant::now();
        loop {
            if self.exec(&format!("return !!({condition});"), vec![]) == json!(true) {
                return;
            }
            assert!(started.elapsed() < timeout, "still not true after {timeout:?}: {condition}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self.ok("POST", "/elements", json!({"using": "css selector", "value": css}));
        v.as_array().unwrap().iter().map(|e| Element(e[ELEMENT].as_str().unwrap().to_string())).collect()
    }

    pub fn find(&self, css: &str) -> Element {
        let all = self.find_all(css);
        assert!(!all.is_empty(), "no element matches {css}");
        all[0].clone()
    }

    /// Elements under `parent` matching `css`.
    pub fn find_in(&self, parent: &Element, css: &str) -> Vec<Element> {
        let v =
            self.ok("POST", &format!("/element/{}/elements", parent.0), json!({"using": "css selector", "value": css}));
        v.as_array().unwrap().iter().map(|e| Element(e[ELEMENT].as_str().unwrap().to_string())).collect()
    }

    /// A click as a user makes it (scrolled into view, at the element's centre).
    pub fn click(&self, e: &Element) {
        self.ok("POST", &format!("/element/{}/click", e.0), json!({}));
    }

    /// Types `text` into the element.
    pub fn send_keys(&self, e: &Element, text: &str) {
        self.ok("POST", &format!("/element/{}/value", e.0), json!({ "text": text }));
    }

    /// The element's rendered text (as a user sees it).
    pub fn text(&self, e: &Element) -> String {
        self.ok("GET", &format!("/element/{}/text", e.0), json!({})).as_str().unwrap_or_default().to_string()
    }

    pub fn property(&self, e: &Element, name: &str) -> Value {
        self.ok("GET", &format!("/element/{}/property/{name}", e.0), json!({}))
    }

    /// Picks the option whose value is `value` in the `<select>` matching `css`, by clicking it.
    pub fn select(&self, css: &str, value: &str) {
        let select = self.find(css);
        let options = self.find_in(&select, "option");
        let option = options
            .iter()
            .find(|o| self.property(o, "value") == json!(value))
            .unwrap_or_else(|| panic!("{css} has no option {value:?}"));
        // Clicking an option selects it (and fires input and change) without opening the list.
        self.click(option);
    }

    /// Moves the pointer to the centre of the element (hover).
    pub fn hover(&self, e: &Element) {
        let actions = json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [{"type": "pointerMove", "duration": 0, "origin": e.json(), "x": 0, "y": 0}]}]});
        self.ok("POST", "/actions", actions);
    }

    /// The text of the open alert, confirm or prompt dialog, if one is open.
    pub fn alert_text(&self) -> Option<String> {
        match self.call_session("GET", "/alert/text", json!({})) {
            Ok(v) => Some(v.as_str().unwrap_or_default().to_string()),
            Err(e) if e.error == "no such alert" => None,
            Err(e) => panic!("GET alert/text: {e:?}"),
        }
    }

    /// Saves a PNG of the viewport to `path`; returns its bytes.
    pub fn screenshot(&self, path: &Path) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = self.ok("GET", "/screenshot", json!({}));
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        std::fs::write(path, &png).unwrap();
        png
    }

    /// Resizes the window (the viewport a screenshot shows).
    pub fn window_size(&self, width: u32, height: u32) {
        self.ok("POST", "/window/rect", json!({"width": width, "height": height}));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// `file://` URL of a local file (absolute), percent-encoding what a URL path cannot hold.
pub fn file_url(path: &Path) -> String {
    let abs = std::fs::canonicalize(path).unwrap();
    let mut url = String::from("file://");
    for b in abs.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}
