//! The dashboard's HTML, rendered on the server from build records (the JSON
//! `/status` serves): repositories and their branches, a repository's
//! history, a build's log (followed live by a few lines of plain JS; without
//! JS the page refreshes while the build runs), and the read-token login
//! form. One CSS block, no asset from outside, readable at 360 px; states
//! are told by a word beside the coloured dot. The overview and a
//! repository's page poll a small JSON (`/pulse`) while a build is queued or
//! running and reload when it changes. An acting session (the web-hook
//! token's) sees Rebuild and Cancel as POST forms carrying its CSRF token.
//! No I/O.

use super::terminal::{self, Terminal};
use crate::build_log;
use crate::payload::short_sha;
use crate::store::record::BuildRecord;

pub use super::html::escape;

/// Percent-encodes a repository or branch name for a path or query.
pub fn url_part(text: &str) -> String {
    crate::payload::percent_encode(text, b"/")
}

const CSS: &str = "
:root{color-scheme:light dark;--fg:#1f2328;--bg:#fff;--mute:#59636e;--line:#d1d9e0}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--mute:#9198a1;--line:#3d444d}}
body{margin:0 auto;max-width:72rem;padding:.75rem;font:15px/1.45 system-ui,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:1.25rem;margin:.25rem 0 .75rem}h1 a{color:inherit}
table{border-collapse:collapse;width:100%;overflow-wrap:anywhere}th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--mute);white-space:nowrap}td.acts{white-space:nowrap}td.num{text-align:right;white-space:nowrap}
a{color:#0969da}@media (prefers-color-scheme:dark){a{color:#4493f8}}
.state{white-space:nowrap;font-weight:600}.state::before{content:'';display:inline-block;width:.7em;height:.7em;border-radius:50%;margin-right:.35em;background:currentColor}
.passed{color:#1a7f37}.failed{color:#d1242f}.running,.queued{color:#9a6700}.unknown,.canceled{color:var(--mute)}
pre{overflow-x:auto;padding:.6rem;border:1px solid var(--line);border-radius:6px;font:13px/1.4 ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
.meta{color:var(--mute);font-size:.9rem}.title{display:block;color:var(--mute);font-size:.9rem}
form.act{display:inline-flex;margin:0 .25rem 0 0}button{font:inherit;padding:.1rem .5rem}
@media (max-width:40rem){.wide{display:none}th,td{padding:.3rem .25rem}}
form{display:flex;gap:.5rem;flex-wrap:wrap}input{font:inherit;padding:.3rem}
h2{font-size:1.05rem;margin:1rem 0 .4rem}#why pre{border-color:#d1242f}mark{background:rgba(212,167,44,.35);color:inherit;font-weight:600}
";

/// The pages' one style block: [`CSS`] and the log's colours
/// ([`terminal::CSS`]); the Content-Security-Policy names it by its hash.
pub(crate) fn stylesheet() -> &'static str {
    static SHEET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHEET.get_or_init(|| format!("{CSS}{}", terminal::CSS))
}

/// The build page's one script, the same on every page so the
/// Content-Security-Policy allows it by its hash: follows the live log named
/// by the log's `data-follow`, and reloads for the final state when it ends.
pub(crate) const FOLLOW_SCRIPT: &str = "\n(async()=>{const pre=document.getElementById('log');try{const r=await fetch(pre.dataset.follow,{credentials:'same-origin'});if(!r.ok||!r.body)return;const rd=r.body.getReader(),dec=new TextDecoder();let first=true;for(;;){const{done,value}=await rd.read();if(done)break;if(first){pre.textContent='';first=false}pre.textContent+=dec.decode(value,{stream:true})}}catch(e){}location.reload()})();\n";

/// The overview's and repository page's one script, allowed by its hash: while
/// the page shows a queued or running build, polls the `data-pulse` URL every
/// 2 s and reloads when its `stamp` is no longer the page's `data-stamp`.
pub(crate) const REFRESH_SCRIPT: &str = "\n(()=>{const d=document.getElementById('pulse').dataset;const tick=async()=>{try{const r=await fetch(d.pulse,{credentials:'same-origin',cache:'no-store'});if(r.ok){const j=await r.json();if(j.stamp!==d.stamp){location.reload();return}}}catch(e){}setTimeout(tick,2000)};setTimeout(tick,2000)})();\n";

/// What a listing page needs besides its records: the viewer's CSRF token
/// when it may act, and, while a listed build is active, the pulse URL and
/// stamp it refreshes by.
#[derive(Default)]
pub struct Listing<'a> {
    pub csrf: Option<&'a str>,
    /// `(pulse URL, stamp)`; `None` when every listed build is finished.
    pub pulse: Option<(String, String)>,
}

/// The refresh of a listing page: the pulse's facts and the script, or nothing.
fn refresher(listing: &Listing) -> String {
    match &listing.pulse {
        Some((url, stamp)) => format!(
            "<div id=\"pulse\" hidden data-pulse=\"{}\" data-stamp=\"{}\"></div>\n<script>{REFRESH_SCRIPT}</script>\n",
            escape(url),
            escape(stamp)
        ),
        None => String::new(),
    }
}

/// An acting viewer's buttons for a branch's latest build `b`: Rebuild the
/// branch (its last push), and Cancel while `b` is queued or running.
fn actions(csrf: Option<&str>, b: &BuildRecord) -> String {
    let Some(csrf) = csrf else { return String::new() };
    let form = |action: String, label: &str| {
        format!(
            "<form class=\"act\" method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">{label}</button></form>",
            escape(&action),
            escape(csrf)
        )
    };
    let mut out = form(format!("/act/build/{}?branch={}", url_part(&b.repo), url_part(&b.branch)), "Rebuild");
    if b.active() {
        out.push_str(&form(format!("/act/cancel/{}?id={}", url_part(&b.repo), url_part(&b.id)), "Cancel"));
    }
    out
}

/// A branch's cell: its name and its latest commit's first line.
fn branch_cell(b: &BuildRecord) -> String {
    let title = if b.title.is_empty() { String::new() } else { format!("<span class=\"title\">{}</span>", escape(&b.title)) };
    format!("{}{title}", escape(&b.branch))
}

/// A whole page: `refresh` adds a no-JS refresh every 5 s (a running build).
fn page(title: &str, body: &str, refresh: bool) -> String {
    let refresh = if refresh { "<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>" } else { "" };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">{refresh}<title>{} · ci-backend</title><style>{}</style></head>\n<body>\n{body}\n</body></html>\n",
        escape(title),
        stylesheet()
    )
}

/// A state as a dot and its word (never colour alone).
fn state(word: &str) -> String {
    let known = ["passed", "failed", "running", "queued", "canceled"];
    let class = if known.contains(&word) { word } else { "unknown" };
    let word = if word.is_empty() { "unknown" } else { word };
    format!("<span class=\"state {class}\">{}</span>", escape(word))
}

/// Seconds as `12 s`, `3 min 5 s`; empty when unknown.
fn duration(record: &BuildRecord) -> String {
    match record.seconds {
        Some(s) if s >= 60 => format!("{} min {} s", s / 60, s % 60),
        Some(s) => format!("{s} s"),
        None => String::new(),
    }
}

/// Unix seconds as `2026-11-27 10:05 UTC`.
pub fn utc(seconds: f64) -> String {
    let iso = crate::store::record::iso_time(seconds); // 2026-11-27T10:05:00Z
    format!("{} {} UTC", &iso[..10], &iso[11..16])
}

/// When a build was queued, as text.
fn when(record: &BuildRecord) -> String {
    record.when().map(utc).unwrap_or_default()
}

/// `/`: every repository, a row per listed branch with its latest build (in
/// the store's listing order: default branch first, then by activity).
pub fn dashboard(repos: &[(String, Vec<BuildRecord>)], listing: &Listing) -> String {
    let mut rows = String::new();
    for (repo, branches) in repos {
        for b in branches {
            let id = b.id.as_str();
            rows.push_str(&format!(
                "<tr><td><a href=\"/repo/{}\">{}</a></td><td>{}</td><td>{}</td><td><a href=\"/builds/{}\">#{}</a></td><td class=\"num wide\">{}</td><td class=\"wide\">{}</td><td class=\"wide\">{}</td>{}</tr>\n",
                url_part(repo),
                escape(repo),
                branch_cell(b),
                state(&b.state),
                url_part(id),
                escape(id),
                duration(b),
                escape(&b.slave),
                when(b),
                if listing.csrf.is_some() { format!("<td class=\"acts\">{}</td>", actions(listing.csrf, b)) } else { String::new() }
            ));
        }
    }
    let body = if rows.is_empty() {
        "<p>No build yet: point a web-hook at this server and push.</p>".to_string()
    } else {
        let act = if listing.csrf.is_some() { "<th>act</th>" } else { "" };
        format!("<table><thead><tr><th>repository</th><th>branch</th><th>state</th><th>build</th><th class=\"wide\">took</th><th class=\"wide\">slave</th><th class=\"wide\">when</th>{act}</tr></thead><tbody>\n{rows}</tbody></table>")
    };
    page("builds", &format!("<h1>ci-backend</h1>\n{body}\n{}", refresher(listing)), listing.pulse.is_some())
}

/// `/repo/<repo>`: each listed branch's history, newest first (branches in
/// the listing's order).
pub fn repository(repo: &str, branches: &[(String, Vec<BuildRecord>)], listing: &Listing) -> String {
    let mut body = format!("<h1><a href=\"/\">ci-backend</a> / {}</h1>\n", escape(repo));
    for (branch, builds) in branches {
        let acts = builds.first().map(|b| actions(listing.csrf, b)).unwrap_or_default();
        body.push_str(&format!(
            "<h2>{}</h2>\n<p class=\"meta\"><img alt=\"badge\" src=\"/badge/{}.svg?branch={}\"> {acts}</p>\n<table><thead><tr><th>build</th><th>state</th><th>commit</th><th>took</th><th class=\"wide\">slave</th><th class=\"wide\">when</th></tr></thead><tbody>\n",
            escape(branch),
            url_part(repo),
            url_part(branch)
        ));
        for b in builds {
            let id = b.id.as_str();
            body.push_str(&format!(
                "<tr><td><a href=\"/builds/{}\">#{}</a></td><td>{}</td><td><code>{}</code> {}</td><td class=\"num\">{}</td><td class=\"wide\">{}</td><td class=\"wide\">{}</td></tr>\n",
                url_part(id),
                escape(id),
                state(&b.state),
                escape(short_sha(&b.sha)),
                escape(&b.title),
                duration(b),
                escape(&b.slave),
                when(b)
            ));
        }
        body.push_str("</tbody></table>\n");
    }
    if branches.is_empty() {
        body.push_str("<p>No branch of this repository is listed: its branches were deleted or its requests closed.</p>\n");
    }
    body.push_str(&refresher(listing));
    page(repo, &body, listing.pulse.is_some())
}

/// Log lines as HTML, one a line (colours as spans: [`Terminal`]); the
/// `marked` one in `<mark>`.
fn log_html(lines: &[String], marked: Option<usize>) -> String {
    let mut out = String::new();
    let mut terminal = Terminal::default();
    for (i, l) in lines.iter().enumerate() {
        let mark = marked == Some(i);
        if mark {
            out.push_str("<mark>");
        }
        terminal.line(l, &mut out);
        if mark {
            out.push_str("</mark>");
        }
        out.push('\n');
    }
    out
}

/// A failed build's first failure (`build_log::why`): its step, the failed
/// snippet's result and output tail (within the failed tail's caps), the
/// failing line marked. Empty when the log shows no failure.
fn why(lines: &[String]) -> String {
    let Some(why) = build_log::why(lines) else { return String::new() };
    let (earlier, output) = why.tail();
    let mut shown = vec![why.result.to_string()];
    if earlier > 0 {
        shown.push(build_log::dropped(build_log::tag(false), earlier));
    }
    shown.extend(output.iter().cloned());
    // The failing line: the last output line, else the result line.
    let marked = if output.is_empty() { 0 } else { shown.len() - 1 };
    shown.extend(why.notes.iter().cloned());
    let step = why.step.map(|t| format!(" in step <b>{}</b>", escape(&crate::ansi::strip(t)))).unwrap_or_default();
    format!(
        "<section id=\"why\" aria-label=\"why it failed\"><h2>Why it failed{step}</h2>\n<pre>{}</pre></section>\n<h2>Log</h2>\n",
        log_html(&shown, Some(marked))
    )
}

/// `/builds/<id>`: the build's facts and its log, a failed build's first
/// failure above it; while it runs, the log follows the `follow` URL
/// (chunked text) and the page reloads at its end.
/// `csrf`: an acting viewer's token (Rebuild, and Cancel while it runs).
pub fn build(record: &BuildRecord, lines: &[String], follow: &str, csrf: Option<&str>) -> String {
    let (repo, id, st) = (record.repo.as_str(), record.id.as_str(), record.state.as_str());
    let running = record.active();
    let log = log_html(lines, None);
    let why = if st == "failed" { why(lines) } else { String::new() };
    let facts: Vec<String> = [
        format!("branch {}", escape(&record.branch)),
        format!("event {}", record.event),
        format!("commit <code>{}</code> {}", escape(short_sha(&record.sha)), escape(&record.title)),
        match record.stolen.as_deref().unwrap_or("") {
            "" => escape(&record.slave),
            from => format!("{} (stolen from {})", escape(&record.slave), escape(from)),
        },
        duration(record),
        when(record),
    ]
    .into_iter()
    .filter(|f| !f.is_empty())
    .collect();
    let follow_attr = if running { format!(" data-follow=\"{}\"", escape(follow)) } else { String::new() };
    let params = params(&record.params);
    let mut body = format!(
        "<h1><a href=\"/\">ci-backend</a> / <a href=\"/repo/{}\">{}</a> / #{}</h1>\n<p>{} <span class=\"meta\">{}</span></p>\n{}{params}{why}<pre id=\"log\"{follow_attr}>{log}</pre>\n",
        url_part(repo),
        escape(repo),
        escape(id),
        state(st),
        facts.join(" · "),
        match csrf {
            Some(_) => format!("<p>{}</p>\n", actions(csrf, record)),
            None => String::new(),
        }
    );
    if running {
        body.push_str(&format!("<script>{FOLLOW_SCRIPT}</script>\n"));
    }
    page(&format!("{repo} #{id}"), &body, running)
}

/// A manual run's parameters, names and values (they are not secrets);
/// empty when it has none.
fn params(params: &crate::payload::Params) -> String {
    if params.is_empty() {
        return String::new();
    }
    let rows: String = params
        .iter()
        .map(|(k, v)| {
            format!("<tr><th scope=\"row\"><code>{}</code></th><td><pre>{}</pre></td></tr>\n", escape(k), escape(&crate::ansi::strip(v)))
        })
        .collect();
    format!("<section id=\"params\" aria-label=\"parameters\"><h2>Parameters</h2>\n<table><tbody>\n{rows}</tbody></table></section>\n")
}

/// A page saying what was not found (`text` is escaped here).
pub fn not_found(text: &str) -> String {
    message("not found", text)
}

/// A page of one sentence (`text` is escaped here): a refusal, an error.
pub fn message(title: &str, text: &str) -> String {
    page(title, &format!("<h1><a href=\"/\">ci-backend</a></h1>\n<p>{}</p>\n", escape(text)), false)
}

/// The read-token form (HOOK_READ_TOKEN): posts to `/login`.
pub fn login(error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"failed\">{}</p>\n", escape(e))).unwrap_or_default();
    let body = format!(
        "<h1>ci-backend</h1>\n<p>Enter the read token to read build logs, or the web-hook token to rebuild and cancel too.</p>\n{error}<form method=\"post\" action=\"/login\"><input type=\"password\" name=\"token\" autocomplete=\"current-password\" aria-label=\"token\" required><button type=\"submit\">Open</button></form>\n"
    );
    page("sign in", &body, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, state: &str) -> BuildRecord {
        BuildRecord {
            id: id.into(),
            repo: "acme/<app>".into(),
            branch: "main".into(),
            sha: "0123456789abcdef".into(),
            state: state.into(),
            seconds: Some(75),
            slave: "slave-0".into(),
            queued_at: Some(1_764_237_900.5),
            ..BuildRecord::default()
        }
    }

    #[test]
    fn names_are_escaped_and_states_are_words() {
        let html = dashboard(&[("acme/<app>".into(), vec![record("7", "failed")])], &Listing::default());
        assert!(html.contains("acme/&lt;app&gt;"), "{html}");
        assert!(!html.contains("<app>"));
        assert!(html.contains("<span class=\"state failed\">failed</span>"));
        assert!(html.contains("href=\"/repo/acme/%3Capp%3E\""));
        assert!(html.contains("1 min 15 s"));
        assert!(html.contains("2025-11-27 10:05 UTC"), "{html}");
    }

    #[test]
    fn buttons_only_for_an_acting_viewer_and_cancel_only_while_active() {
        let rows = |state: &str, csrf| {
            dashboard(&[("a/b".into(), vec![BuildRecord { repo: "a/b".into(), ..record("7", state) }])], &Listing { csrf, pulse: None })
        };
        let html = rows("running", Some("c0ffee"));
        assert!(html.contains("<form class=\"act\" method=\"post\" action=\"/act/build/a/b?branch=main\"><input type=\"hidden\" name=\"csrf\" value=\"c0ffee\"><button type=\"submit\">Rebuild</button></form>"), "{html}");
        assert!(html.contains("action=\"/act/cancel/a/b?id=7\"") && html.contains(">Cancel</button>"), "{html}");
        let done = rows("passed", Some("c0ffee"));
        assert!(done.contains(">Rebuild</button>") && !done.contains(">Cancel</button>"), "{done}");
        assert!(!rows("running", None).contains("<form"), "no session, no form");
        let b = BuildRecord { repo: "a/b".into(), ..record("7", "queued") };
        assert!(build(&b, &[], "/x", Some("c0ffee")).contains(">Cancel</button>"));
        assert!(!build(&b, &[], "/x", None).contains("<button"));
    }

    #[test]
    fn a_listing_refreshes_only_while_active_and_titles_are_escaped() {
        let r = BuildRecord { title: "fix <script>".into(), ..record("7", "passed") };
        let idle = dashboard(&[("a/b".into(), vec![r.clone()])], &Listing::default());
        assert!(!idle.contains("<script>") && !idle.contains("pulse") && !idle.contains("refresh"), "{idle}");
        assert!(idle.contains("<td>main<span class=\"title\">fix &lt;script&gt;</span></td>"), "{idle}");
        let pulse = Some(("/pulse?repo=a%2Fb".to_string(), "0badf00d".to_string()));
        let busy = repository("a/b", &[("main".into(), vec![r])], &Listing { csrf: None, pulse });
        assert!(busy.contains("<div id=\"pulse\" hidden data-pulse=\"/pulse?repo=a%2Fb\" data-stamp=\"0badf00d\"></div>"), "{busy}");
        assert!(busy.contains(&format!("<script>{REFRESH_SCRIPT}</script>")));
        assert!(busy.contains("<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>"));
    }

    #[test]
    fn a_running_build_follows_and_refreshes_without_js() {
        let html = build(&record("9", "running"), &["- commit 0123456789 (x)".into()], "/status/acme/app?follow=1&id=9", None);
        assert!(html.contains("<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>"));
        // The one script (allowed by its hash) reads the URL from the log's data-follow.
        assert!(html.contains("<pre id=\"log\" data-follow=\"/status/acme/app?follow=1&amp;id=9\">"), "{html}");
        assert!(html.contains(&format!("<script>{FOLLOW_SCRIPT}</script>")));
        assert!(html.contains("- commit 0123456789 (x)\n</pre>"));
        let done = build(&record("9", "passed"), &[], "/x", None);
        assert!(!done.contains("<script>") && !done.contains("refresh"));
    }

    #[test]
    fn a_failed_build_starts_with_why_and_colours_are_spans() {
        let log: Vec<String> = [
            "- commit 0123456789 (x)",
            "- build <all>",
            "[passed] make (1 seconds, exit code 0)",
            "[failed] make test (2 seconds, exit code 2)",
            "[failed]   . cc -c a.c",
            "[failed]   . \u{1b}[1;31merror:\u{1b}[0m undefined reference to <foo>",
            "[skipped] echo after",
        ]
        .map(String::from)
        .to_vec();
        let html = build(&record("3", "failed"), &log, "/x", None);
        let why = html.find("<section id=\"why\"").expect("a why section");
        assert!(why < html.find("<pre id=\"log\"").unwrap(), "why comes first: {html}");
        let want = "<h2>Why it failed in step <b>build &lt;all&gt;</b></h2>\n<pre>[failed] make test (2 seconds, exit code 2)\n[failed]   . cc -c a.c\n\
                    <mark>[failed]   . <span class=\"tc1 tb\">error:</span> undefined reference to &lt;foo&gt;</mark>\n</pre>";
        assert!(html.contains(want), "{html}");
        assert!(!html.contains('\u{1b}'), "{html}");
        assert!(!build(&record("3", "passed"), &log[..3], "/x", None).contains("id=\"why\""));
        assert!(!build(&record("3", "canceled"), &log, "/x", None).contains("id=\"why\""));
    }

    #[test]
    fn the_build_page_says_its_event() {
        let r = BuildRecord { event: crate::payload::Event::PullRequest, branch: "pull/3".into(), ..record("4", "passed") };
        let html = build(&r, &[], "/x", None);
        assert!(html.contains("branch pull/3 · event pull_request · commit"), "{html}");
    }

    #[test]
    fn a_manual_runs_parameters_are_shown_escaped() {
        let params = crate::payload::Params::from([("TARGET".to_string(), "<eu> & \"us\"".to_string())]);
        let html = build(&BuildRecord { params, ..record("5", "passed") }, &[], "/x", None);
        let want = "<h2>Parameters</h2>\n<table><tbody>\n<tr><th scope=\"row\"><code>TARGET</code></th><td><pre>&lt;eu&gt; &amp; &quot;us&quot;</pre></td></tr>\n";
        assert!(html.contains(want), "{html}");
        assert!(!build(&record("5", "passed"), &[], "/x", None).contains("Parameters"));
    }

    #[test]
    fn utc_dates() {
        // date -u -d @0 / @951782400 (2000-02-29) / @1764237900
        assert_eq!(utc(0.0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_764_237_900.0), "2025-11-27 10:05 UTC");
    }
}
