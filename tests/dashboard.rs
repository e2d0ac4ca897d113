//! The dashboard in a real browser (Debian's headless Chromium), badges parsed by xmllint, and
//! HOOK_READ_TOKEN on every read route.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Headless Chromium's DOM of `url` after its scripts ran (`--dump-dom`).
fn dom(url: &str) -> String {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--timeout=4000", "--dump-dom", url])
        .output()
        .unwrap_or_else(|e| panic!("chromium (installed by make deps): {e}"));
    assert!(out.status.success(), "chromium --dump-dom {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PNG of `url` at `width` px, written to `path`.
fn screenshot(url: &str, width: u32, path: &Path) {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--window-size={width},720"))
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium --screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(path).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
}

/// Where screenshots are kept after the test (the test directory is removed when it passes).
fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_dashboard_in_a_browser_lists_repositories_and_follows_a_running_build() {
    // Chromium loads both cores for seconds: a 2 s lease could go unconfirmed meanwhile (and the
    // running build be stopped for safety), so this test's slaves hold 10 s leases.
    let b = Backend::start(2, &[], &[("SLAVE_LEASE", "10")]);
    let ok = name_for("dash", 2, 0, 0);
    let bad = name_for("dash", 2, 0, 1);
    let (_, _, passed) = b.build(&ok, &[("integration.yml", "step: unit tests\nshell: \"true\"\n")], "green");
    let (_, _, failed) = b.build(&bad, &[("integration.yml", "step: lint\nshell: \"false\"\n")], "red");
    assert_eq!((passed.state.as_str(), failed.state.as_str()), ("passed", "failed"));
    // A build that prints a line, waits for the test, prints another, waits again.
    let blocker = Blocker::new(b.root(), "dash");
    let second = Blocker::new(b.root(), "dash-2");
    let slow = name_for("dash", 2, 1, 0);
    let yml = format!(
        "step: slow\nshell: |\n  echo first-line-of-the-build\n{}  echo second-line-printed-after-the-page-was-served\n{}",
        indent(&blocker.snippet(), 2),
        indent(&second.snippet(), 2)
    );
    let (_, running) = b.queue(&slow, &yml, "still running");
    blocker.wait_started();

    let base = format!("http://{}", b.hook.addr);
    let home = dom(&format!("{base}/"));
    for (repo, state) in [(&ok, "passed"), (&bad, "failed"), (&slow, "running")] {
        let row = home.lines().find(|l| l.contains(&format!(">{repo}</a>"))).unwrap_or_else(|| panic!("{repo} missing:\n{home}"));
        assert!(row.contains(&format!("<span class=\"state {state}\">{state}</span>")), "{repo} should read {state}: {row}");
    }
    let shot = output_dir().join("dashboard.png");
    screenshot(&format!("{base}/"), 360, &shot);
    screenshot(&format!("{base}/"), 1000, &output_dir().join("dashboard-wide.png"));
    eprintln!("dashboard screenshots: {} (360 px) and dashboard-wide.png (1000 px)", shot.display());

    // The running build's page shows its first line before the build ends (server-rendered)...
    let served = format!("{base}/builds/{running}");
    let page = http(b.hook.addr, "GET", &format!("/builds/{running}"), &[("Accept", "text/html")], b"");
    // Every page: no frame, no sniffing, no referrer outside, and a policy that allows nothing
    // from elsewhere and only its own style and script by hash (the browser below runs the script
    // under it, so the hash is right).
    let csp = page.header("Content-Security-Policy").unwrap_or_default().to_string();
    assert!(csp.starts_with("default-src 'none'; style-src 'sha256-") && csp.contains("; script-src 'sha256-"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"), "{csp}");
    for (name, want) in [("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin")] {
        assert_eq!(page.header(name), Some(want), "{name}: {page}");
    }
    let html = page.text();
    assert!(html.contains("first-line-of-the-build") && !html.contains("second-line"), "{html}");
    let log = http(b.hook.addr, "GET", &format!("/status/{slow}?id={running}"), &[], b"");
    assert_eq!(log.header("Cache-Control"), Some("no-store"), "a log is not cached: {log}");
    // ...and follows it live: a line printed after the page was served reaches the browser's
    // DOM through the page's script and the follow stream.
    let browser = std::thread::spawn(move || dom(&served));
    let path = format!("path=/builds/{running} ");
    wait_for("the browser to fetch the build page", DEADLINE, || {
        if b.hook.log().lines().any(|l| l.contains(&path)) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    blocker.release();
    let page = browser.join().unwrap();
    assert!(page.contains("first-line-of-the-build"), "{page}");
    assert!(page.contains("second-line-printed-after-the-page-was-served"), "the page did not follow the log:\n{page}");
    assert_eq!(read_build(&b.redis, &running).unwrap().state, "running", "the build was still running");
    screenshot(&format!("{base}/builds/{running}"), 360, &output_dir().join("build-running.png"));
    second.release();
    wait_build(&b.redis, &running, LONG);

    // A repository's page: its history, newest first, with links to each build.
    let repo_page = dom(&format!("{base}/repo/{bad}"));
    assert!(repo_page.contains(&format!("href=\"/builds/{}\"", failed.id)), "{repo_page}");
    assert!(repo_page.contains(&format!("src=\"/badge/{bad}.svg?branch=main\"")), "{repo_page}");
}

#[test]
fn a_failed_builds_page_starts_with_why_in_a_browser() {
    let b = Backend::start(1, &[], &[("SLAVE_LEASE", "10")]);
    let yml = "- step: compile\n  shell: echo compiled\n- step: link\n  shell:\n    - \"true\"\n    - |-\n      echo 'cc -o app main.o'\n      printf '\\033[1;31merror:\\033[0m undefined reference to <foo>\\n' >&2\n      exit 2\n    - no-skip echo cleanup; exit 3\n";
    let (_git, _sha, build) = b.build("acme/why-page", &[("integration.yml", yml)], "why page");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    let base = format!("http://{}", b.hook.addr);
    let page = dom(&format!("{base}/builds/{}", build.id));
    let why = page.find("<section id=\"why\"").unwrap_or_else(|| panic!("no why section:\n{page}"));
    let log = page.find("<pre id=\"log\"").unwrap_or_else(|| panic!("no log:\n{page}"));
    assert!(why < log, "why comes before the whole log:\n{page}");
    let section = &page[why..log];
    // The first failed snippet (not the later no-skip one), its output, the last line marked.
    assert!(section.contains("Why it failed in step <b>link</b>"), "{section}");
    assert!(section.contains("[failed] echo 'cc -o app main.o'... ("), "{section}");
    assert!(section.contains("[failed]   . cc -o app main.o\n"), "{section}");
    assert!(
        section.contains("<mark>[failed]   . <span class=\"tc1 tb\">error:</span> undefined reference to &lt;foo&gt;</mark>"),
        "{section}"
    );
    assert!(!section.contains("cleanup") && !section.contains("compiled"), "{section}");
    assert_eq!(section.matches("<mark>").count(), 1, "{section}");
    // Then the whole log, coloured too.
    assert!(page[log..].contains("- compile") && page[log..].contains("[failed] echo cleanup; exit 3"), "{page}");
    assert!(!page.contains('\u{1b}'), "an escape reached the page");
    screenshot(&format!("{base}/builds/{}", build.id), 360, &output_dir().join("build-failed.png"));
}

#[test]
fn badges_parse_as_svg_for_every_state_and_revalidate_by_etag() {
    let b = Backend::start(1, &[], &[]);
    let blocker = Blocker::new(b.root(), "badge");
    let (_, _, _) = b.build("badge/green", &[("integration.yml", "step: s\nshell: \"true\"\n")], "green");
    let (_, _, _) = b.build("badge/red", &[("integration.yml", "step: s\nshell: \"false\"\n")], "red");
    let (_, _) = b.queue("badge/busy", &blocker.yml(), "busy");
    blocker.wait_started();
    for (repo, word, colour) in [
        ("badge/green", "passing", "#4c1"),
        ("badge/red", "failing", "#e05d44"),
        ("badge/busy", "running", "#dfb317"),
        ("badge/none", "unknown", "#9f9f9f"),
    ] {
        let r = b.hook.get(&format!("/badge/{repo}.svg"));
        assert_eq!(r.code, 200, "{repo}: {r}");
        assert_eq!(r.header("Content-Type"), Some("image/svg+xml"));
        assert_eq!(r.header("Cache-Control"), Some("no-cache"));
        let svg = b.root().join("badge.svg");
        std::fs::write(&svg, &r.body).unwrap();
        let lint = Command::new("xmllint").arg("--noout").arg(&svg).output().unwrap();
        assert!(lint.status.success(), "{repo}: xmllint: {}", String::from_utf8_lossy(&lint.stderr));
        let text = r.text();
        assert!(text.contains(&format!(">{word}</text>")) && text.contains(colour), "{repo}: {text}");
        assert!(!text.contains("http://") || text.matches("http://").all(|_| text.contains("xmlns=\"http://www.w3.org/2000/svg\"")));
        let etag = r.header("ETag").expect("ETag").to_string();
        let again = http(b.hook.addr, "GET", &format!("/badge/{repo}.svg"), &[("If-None-Match", &etag)], b"");
        assert_eq!(again.code, 304, "{repo}: {again}");
    }
    blocker.release();
}

#[test]
fn the_read_token_guards_every_read_route_but_badges_and_ping() {
    let read = "read-token-for-tests";
    let b = Backend::start(1, &[("HOOK_READ_TOKEN", read)], &[]);
    let (_, _, build) = b.build("private/app", &[("integration.yml", "step: s\nshell: \"true\"\n")], "secret log");
    let routes = [
        "/status/private/app".to_string(),
        format!("/status/private/app?id={}", build.id),
        "/history/private/app".to_string(),
        "/repos".to_string(),
        "/status/private/app?follow=1".to_string(),
        "/repo/private/app".to_string(),
        format!("/builds/{}", build.id),
    ];
    let bearer = format!("Bearer {read}");
    for route in &routes {
        let r = b.hook.get(route);
        assert_eq!(r.code, 401, "{route} without the token: {r}");
        assert!(!r.text().contains("secret log"));
        let ok = http(b.hook.addr, "GET", route, &[("Authorization", &bearer)], b"");
        assert_eq!(ok.code, 200, "{route} with the token: {ok}");
    }
    let html = http(b.hook.addr, "GET", "/", &[("Accept", "text/html")], b"");
    assert_eq!(html.code, 401);
    assert!(html.text().contains("<form method=\"post\" action=\"/login\">"), "{html}");
    assert_eq!(b.hook.get("/badge/private/app.svg").code, 200, "badges stay public");
    assert_eq!(b.hook.get("/ping").code, 200);
    // The login form's cookie opens the dashboard.
    let wrong = http(b.hook.addr, "POST", "/login", &[("Content-Type", "application/x-www-form-urlencoded")], b"token=nope");
    assert_eq!(wrong.code, 403);
    let login =
        http(b.hook.addr, "POST", "/login", &[("Content-Type", "application/x-www-form-urlencoded")], format!("token={read}").as_bytes());
    assert_eq!(login.code, 303, "{login}");
    let cookie = login.header("Set-Cookie").expect("Set-Cookie").split(';').next().unwrap().to_string();
    assert!(!login.header("Set-Cookie").unwrap().contains("Secure"), "plain http: {login}");
    // Behind a proxy that terminates TLS, the cookie never travels in clear.
    let form = [("Content-Type", "application/x-www-form-urlencoded"), ("X-Forwarded-Proto", "https")];
    let secure = http(b.hook.addr, "POST", "/login", &form, format!("token={read}").as_bytes());
    assert!(secure.header("Set-Cookie").is_some_and(|c| c.ends_with("; Secure")), "{secure}");
    assert!(!cookie.contains(read));
    let page = http(b.hook.addr, "GET", "/", &[("Accept", "text/html"), ("Cookie", &cookie)], b"");
    assert_eq!(page.code, 200);
    assert!(page.text().contains(">private/app</a>"), "{page}");
}
