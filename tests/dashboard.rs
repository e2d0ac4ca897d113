//! The dashboard in a real browser (Debian's headless Chromium, driven over the DevTools pipe
//! where a test clicks), badges parsed by xmllint, and
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

/// The positions in `html` of each of `needles`, which must all be there.
fn positions(html: &str, needles: &[String]) -> Vec<usize> {
    needles.iter().map(|n| html.find(n.as_str()).unwrap_or_else(|| panic!("{n:?} missing:\n{html}"))).collect()
}

fn sorted(v: &[usize]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

#[test]
fn branches_list_default_first_then_by_activity_with_titles_and_leave_when_deleted_or_closed() {
    let b = Backend::start(1, &[], &[("SLAVE_LEASE", "10")]);
    let name = "order/app";
    let mut git = b.repo(name);
    let yml = "step: s\nshell: \"true\"\n";
    // Pushed in this order: alphabetical order (aaa-old, main, zzz-new) and activity order
    // (pull/7, zzz-new, main, aaa-old) both differ from the one wanted.
    let mut built = std::collections::HashMap::new();
    for (branch, msg) in [
        ("aaa-old", "old work on <aaa>\n\nits body is not shown"),
        ("main", "main: the default branch's head"),
        ("zzz-new", "  newest work  \nsecond line"),
    ] {
        git.checkout(branch);
        git.write("integration.yml", &format!("{yml}# {branch}\n"));
        let sha = git.commit(msg);
        git.push();
        let id = b.hook.push_ok(&git, &sha);
        assert_eq!(wait_build(&b.redis, &id, LONG).state, "passed");
        built.insert(branch, id);
    }
    // A request whose head is on no branch, as a forge keeps it.
    let head = git.head();
    run(crate::harness::git(&git.work).args(["push", "-q", "origin", &format!("{head}:refs/pull/7/head")]));
    let mut body = crate::pulls::github_pull(name, &git.file_url(), 7, &head, name, "opened");
    body["repository"]["default_branch"] = serde_json::json!("main");
    let r = b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]);
    let pull = crate::pulls::accepted(&r);
    assert_eq!(wait_build(&b.redis, &pull, LONG).state, "passed");
    assert_eq!(b.redis.hgetall(&format!("ci:build:{}", built["main"]))["title"], "main: the default branch's head");

    let base = format!("http://{}", b.hook.addr);
    let want = ["main", "pull/7", "zzz-new", "aaa-old"];
    let home = dom(&format!("{base}/"));
    // Each row: the branch and its head commit's first line (trimmed; the request's title).
    let cells: Vec<String> = [
        ("main", "main: the default branch's head"),
        ("pull/7", "Update the README with new information."),
        ("zzz-new", "newest work"),
        ("aaa-old", "old work on &lt;aaa&gt;"),
    ]
    .iter()
    .map(|(branch, title)| format!("<td>{branch}<span class=\"title\">{title}</span></td>"))
    .collect();
    assert!(sorted(&positions(&home, &cells)), "default branch first, then newest first:\n{home}");
    assert!(!home.contains("its body is not shown") && !home.contains("second line"), "{home}");
    let text = b.hook.get("/repos").text();
    let listed: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix(&format!("{name} "))?.split(' ').next()).collect();
    assert_eq!(listed, want, "{text}");
    let json = b.hook.get_json("/repos").json();
    let branches: Vec<&str> = json[0]["branches"].as_array().unwrap().iter().map(|r| r["branch"].as_str().unwrap()).collect();
    assert_eq!(branches, want, "{json}");
    assert_eq!(json[0]["branches"][0]["title"], "main: the default branch's head", "{json}");
    let repo_page = dom(&format!("{base}/repo/{name}"));
    let heads: Vec<String> = want.iter().map(|w| format!("<h2>{w}</h2>")).collect();
    assert!(sorted(&positions(&repo_page, &heads)), "{repo_page}");

    // The branch deleted (GitHub's push with `deleted`), the request closed.
    let mut del = github_push(name, &git.file_url(), "zzz-new", &"0".repeat(40), "", "main");
    del["deleted"] = serde_json::json!(true);
    let r = b.hook.send_github("/", "push", del.to_string().as_bytes(), &[]);
    assert_eq!((r.code, r.json()["reason"].as_str()), (200, Some("branch \"zzz-new\" deleted: nothing to build")), "{r}");
    let closed = crate::pulls::github_pull(name, &git.file_url(), 7, &head, name, "closed");
    let r = b.hook.send_github("/", "pull_request", closed.to_string().as_bytes(), &[]);
    assert_eq!((r.code, r.json()["reason"].as_str()), (200, Some("pull request 7 closed: nothing to build")), "{r}");
    assert!(b.hook.log().contains("branch.unlisted repo=order/app branch=pull/7"), "{}", b.hook.log());
    let home = dom(&format!("{base}/"));
    assert!(sorted(&positions(&home, &[cells[0].clone(), cells[3].clone()])), "{home}");
    assert!(!home.contains("zzz-new") && !home.contains("pull/7"), "gone from the overview:\n{home}");
    let text = b.hook.get("/repos").text();
    let listed: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix(&format!("{name} "))?.split(' ').next()).collect();
    assert_eq!(listed, ["main", "aaa-old"], "{text}");
    let repo_page = dom(&format!("{base}/repo/{name}"));
    assert!(!repo_page.contains("<h2>zzz-new</h2>") && !repo_page.contains("<h2>pull/7</h2>"), "{repo_page}");
    // Their builds and history stay.
    for id in [&built["zzz-new"], &pull] {
        let page = http(b.hook.addr, "GET", &format!("/builds/{id}"), &[("Accept", "text/html")], b"");
        assert_eq!(page.code, 200, "{page}");
        assert!(page.text().contains(&format!("/ #{id}</h1>")), "{page}");
    }
    let history = b.hook.get(&format!("/history/{name}?branch=zzz-new"));
    assert!(history.code == 200 && history.text().starts_with(&format!("{} passed", built["zzz-new"])), "{history}");
    // A new push lists the branch again.
    git.checkout("zzz-new");
    git.write("again", "x");
    let sha = git.commit("back again");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    wait_build(&b.redis, &id, LONG);
    let text = b.hook.get("/repos").text();
    assert!(text.lines().any(|l| l.starts_with(&format!("{name} zzz-new {id} "))), "{text}");
}

/// Logs in through the login form of a fresh page; returns when `/` has loaded.
fn login(browser: &mut crate::harness::browser::Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/login"));
    browser.fill("input[name=token]", token);
    browser.click("form[action=\"/login\"] button");
    browser.wait_loaded("/");
}

#[test]
fn pages_refresh_while_a_build_runs_and_a_web_hook_token_session_rebuilds_and_cancels() {
    use crate::harness::browser::Browser;
    let read = "read-token-for-the-pages";
    let b = Backend::start(1, &[("HOOK_READ_TOKEN", read)], &[("SLAVE_LEASE", "10")]);
    let base = format!("http://{}", b.hook.addr);
    let blocker = Blocker::new(b.root(), "live");
    let (_, running) = b.queue("live/app", &blocker.yml(), "a build that waits");
    blocker.wait_started();

    let mut browser = Browser::start(b.root());
    login(&mut browser, &base, &b.hook.token);
    let page = browser.html();
    assert!(page.contains("<span class=\"state running\">running</span>"), "{page}");
    assert!(page.contains("id=\"pulse\"") && page.contains(">Rebuild</button>") && page.contains(">Cancel</button>"), "{page}");
    browser.screenshot(900, 420, &output_dir().join("dashboard-acting.png"));
    // The page changes by itself: nothing here reloads it.
    let pulses = || b.hook.log().matches("path=/pulse ").count();
    blocker.release();
    wait_for("the overview to show the build passed", LONG, || {
        let html = browser.try_eval("document.body.innerHTML")?;
        let html = html.as_str().unwrap_or_default();
        if html.contains("<span class=\"state passed\">passed</span>") {
            Ok(())
        } else {
            Err(html.to_string())
        }
    });
    assert_eq!(read_build(&b.redis, &running).unwrap().state, "passed");
    assert!(pulses() > 0, "the page polled /pulse:\n{}", b.hook.log());
    // Idle: the page polls nothing and offers no Cancel.
    let page = browser.html();
    assert!(!page.contains("id=\"pulse\"") && !page.contains(">Cancel</button>") && page.contains(">Rebuild</button>"), "{page}");

    // Rebuild, clicked: a new build of the branch's last push, event manual; the browser is on its page.
    let before = b.redis.get("ci:seq").unwrap();
    browser.click("form[action^=\"/act/build/live/app\"] button");
    let path = browser.wait_path("/builds/");
    let rebuilt = path.trim_start_matches("/builds/").to_string();
    assert_ne!(rebuilt, before, "a new build");
    let fields = b.redis.hgetall(&format!("ci:build:{rebuilt}"));
    assert_eq!((fields["repo"].as_str(), fields["branch"].as_str(), fields["event"].as_str()), ("live/app", "main", "manual"));
    assert_eq!(fields["title"], "a build that waits");
    wait_build(&b.redis, &rebuilt, LONG);

    // Cancel, clicked on a running build's page.
    let slow = Blocker::new(b.root(), "slow");
    let (_, waiting) = b.queue("live/slow", &slow.yml(), "slow one");
    slow.wait_started();
    browser.goto(&format!("{base}/builds/{waiting}"));
    browser.click("form[action^=\"/act/cancel/live/slow\"] button");
    wait_for("the build to be canceled", DEADLINE, || match read_build(&b.redis, &waiting) {
        Some(r) if r.state == "canceled" => Ok(()),
        other => Err(format!("{:?}", other.map(|r| r.state))),
    });
    browser.wait_path(&format!("/builds/{waiting}"));
    drop(browser);

    // A forged POST: the acting cookie without its CSRF token, with another's, or no cookie.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let login_as = |token: &str| {
        let r = http(b.hook.addr, "POST", "/login", &form, format!("token={}", urlencode(token)).as_bytes());
        assert_eq!(r.code, 303, "{r}");
        r.header("Set-Cookie").unwrap().split(';').next().unwrap().to_string()
    };
    let acting = login_as(&b.hook.token);
    let other = login_as(&b.hook.token);
    let csrf_of = |cookie: &str| {
        let page = http(b.hook.addr, "GET", "/", &[("Accept", "text/html"), ("Cookie", cookie)], b"").text();
        let at = page.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no form:\n{page}")) + 19;
        page[at..at + 64].to_string()
    };
    let (mine, theirs) = (csrf_of(&acting), csrf_of(&other));
    assert_ne!(mine, theirs, "each session has its own CSRF token");
    let seq = b.redis.get("ci:seq");
    let reader = login_as(read);
    let path = "/act/build/live/app?branch=main";
    for (cookie, body, why) in [
        (acting.as_str(), String::new(), "the form carries no CSRF token"),
        (acting.as_str(), format!("csrf={theirs}"), "the form's CSRF token is not this session's"),
        (reader.as_str(), format!("csrf={mine}"), "needs a sign-in with the web-hook token"),
        ("", format!("csrf={mine}"), "needs a sign-in with the web-hook token"),
    ] {
        let r = http(b.hook.addr, "POST", path, &[form[0], ("Cookie", cookie)], body.as_bytes());
        assert_eq!(r.code, 403, "{cookie} {body}: {r}");
        assert!(r.json()["error"].as_str().unwrap_or_default().contains(why), "{r}");
    }
    assert_eq!(b.redis.get("ci:seq"), seq, "nothing was queued");
    let ok = http(b.hook.addr, "POST", path, &[form[0], ("Cookie", &acting)], format!("csrf={mine}").as_bytes());
    assert_eq!(ok.code, 303, "the right token acts: {ok}");

    // A read-token session reads but sees no buttons, in the browser too.
    std::fs::create_dir_all(b.root().join("reader")).unwrap();
    let mut browser = Browser::start(&b.root().join("reader"));
    login(&mut browser, &base, read);
    let page = browser.html();
    assert!(page.contains(">live/app</a>") && !page.contains("<button") && !page.contains("csrf"), "{page}");
    browser.goto(&format!("{base}/builds/{rebuilt}"));
    assert!(!browser.html().contains("<button"), "no button on a build page either");
}

/// Redis's counter of `field` in `INFO <section>`.
fn info_counter(redis: &Redis, section: &str, field: &str) -> Option<u64> {
    let info = redis.cli(&["INFO", section]).str().unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).map(|v| {
        let v = v.split(',').next().unwrap_or(v);
        v.trim_start_matches("calls=").trim().parse().unwrap()
    })
}

#[test]
fn listings_and_their_refresh_never_read_a_log() {
    let mut b = Backend::start(1, &[], &[]);
    // Five branches whose builds stored big logs (debug: every output line is kept).
    let yml = "step: big\ndebug: true\nshell: head -c 300000 /dev/zero | tr '\\\\0' x | fold -w 100\n";
    let mut git = b.repo("cheap/app");
    let mut log_bytes = 0;
    for branch in ["main", "b1", "b2", "b3", "b4"] {
        git.checkout(branch);
        git.write("integration.yml", yml);
        let sha = git.commit(branch);
        git.push();
        let id = b.hook.push_ok(&git, &sha);
        let build = wait_build(&b.redis, &id, LONG);
        assert_eq!(build.state, "passed", "{:?}", build.log.iter().take(5).collect::<Vec<_>>());
        log_bytes += b.redis.hgetall(&format!("ci:build:{id}"))["log"].len();
    }
    assert!(log_bytes > 150_000, "the logs are big: {log_bytes} bytes");
    // Nothing else talks to Redis now but the hook.
    b.slaves.clear();
    b.redis.cli(&["CONFIG", "RESETSTAT"]);
    let before = info_counter(&b.redis, "stats", "total_net_output_bytes").unwrap();
    assert_eq!(b.hook.get("/repos").text().lines().count(), 5);
    assert_eq!(b.hook.get_json("/pulse").json()["active"], false);
    assert_eq!(b.hook.get_json("/pulse?repo=cheap/app").json()["active"], false);
    for path in ["/", "/repo/cheap/app"] {
        assert_eq!(http(b.hook.addr, "GET", path, &[("Accept", "text/html")], b"").code, 200, "{path}");
    }
    let read = info_counter(&b.redis, "stats", "total_net_output_bytes").unwrap() - before;
    eprintln!("five listings of 5 branches ({log_bytes} bytes of logs) read {read} bytes from Redis");
    assert!(read < 32 * 1024, "the listings read {read} bytes from Redis: logs are {log_bytes} bytes");
    assert_eq!(info_counter(&b.redis, "commandstats", "cmdstat_hgetall"), None, "no whole record read");
    // One HMGET per listed branch in each of the five listings, and the repository page's one
    // per build of its history (one build a branch here).
    assert_eq!(info_counter(&b.redis, "commandstats", "cmdstat_hmget"), Some(5 * 5 + 5));
}
