//! Why a build failed: a failed snippet's last output lines follow its `[failed]` line without
//! `debug` (in the record, `/status`, the live follow stream and the build page), within 200 lines
//! and 64 KiB; terminal sequences are cleaned by the slave, stripped from text and rendered as
//! colour spans on pages; a step's `timeout:` kills its snippet and logs `timed out`.

use crate::harness::*;

/// The hook's request log shows a follow of build `id` answered (the follower is attached).
fn wait_follower(hook: &Hook, id: &str) {
    wait_for("the follower to be answered", LONG, || {
        let seen =
            events(&hook.log(), "request").iter().any(|l| kv(l, "follow").as_deref() == Some("1") && kv(l, "id").as_deref() == Some(id));
        if seen {
            Ok(())
        } else {
            Err("no follow request yet".into())
        }
    });
}

/// The result line of a snippet shown as `shown`: `[failed] <shown> (<n> seconds, <how>)`.
fn result_of(log: &[String], shown: &str, how: &str) -> String {
    let prefix = format!("[failed] {shown} (");
    let suffix = format!(" seconds, {how})");
    let found =
        log.iter().find(|l| l.strip_prefix(&prefix).and_then(|r| r.strip_suffix(&suffix)).is_some_and(|n| n.parse::<u64>().is_ok()));
    found.cloned().unwrap_or_else(|| panic!("no {prefix:?}…{suffix:?} line in {log:#?}"))
}

/// The lines of `log` from the one equal to `first`, `n` of them.
fn from<'a>(log: &'a [String], first: &str, n: usize) -> &'a [String] {
    let at = log.iter().position(|l| l == first).unwrap_or_else(|| panic!("no line {first:?} in {log:#?}"));
    &log[at..(at + n).min(log.len())]
}

#[test]
fn a_failed_snippet_is_followed_by_its_last_output_lines_in_the_record_text_and_live_stream() {
    let b = Backend::start(1, &[], &[]);
    let blocker = Blocker::new(b.root(), "why");
    let many = "seq -f 'line %g' 1 250; echo 'error - undefined reference to foo' >&2; exit 2";
    // 100 lines of 4,000 bytes: `0001yyyy…`.
    let wide = "pad=$(head -c 3996 /dev/zero | tr '\\0' y); seq -f '%04g' 1 100 | sed \"s/\\$/$pad/\"; exit 1";
    let yml = format!(
        "- step: wait\n  shell: |\n{}- step: build\n  shell:\n    - echo quiet-when-passing\n    - |-\n      {many}\n    - |-\n      no-skip {wide}\n",
        indent(&blocker.snippet(), 4)
    );
    let (git, id) = b.queue("acme/why", &yml, "why");
    blocker.wait_started();
    let addr = b.hook.addr;
    let path = format!("/status/acme/why?follow=1&id={id}");
    let follower = std::thread::spawn(move || http(addr, "GET", &path, &[], b""));
    wait_follower(&b.hook, &id);
    blocker.release();
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "failed", "{:#?}", build.log);

    // 251 lines printed, the last 200 kept: `line 52` to `line 250`, then the error.
    let failed = result_of(&build.log, &cut(many), "exit code 2");
    let mut want = vec![failed.clone(), "[failed]   . (51 earlier output lines dropped)".to_string()];
    want.extend((52..=250).map(|i| format!("[failed]   . line {i}")));
    want.push("[failed]   . error - undefined reference to foo".into());
    assert_eq!(from(&build.log, &failed, want.len()), &want[..]);
    // 4,001 bytes a line with its newline: 16 fit in 64 KiB (65,536), 17 do not.
    let failed_wide = result_of(&build.log, &cut(wide), "exit code 1");
    let mut want_wide = vec![failed_wide.clone(), "[failed]   . (84 earlier output lines dropped)".to_string()];
    want_wide.extend((85..=100).map(|i| format!("[failed]   . {i:04}{}", "y".repeat(3996))));
    assert_eq!(from(&build.log, &failed_wide, 100), &want_wide[..], "the wide tail, and nothing after it");
    // A snippet that passes stays quiet.
    assert!(build.has_line("[passed] echo quiet-when-passing (0 seconds, exit code 0)"), "{:#?}", build.log);
    assert!(!build.log.iter().any(|l| l.contains("quiet-when-passing") && l.starts_with("[passed]   . ")), "{:#?}", build.log);

    // /status: the same lines, 412.
    let r = b.hook.get(&format!("/status/{}", git.name));
    assert_eq!((r.code, r.text()), (412, format!("{}\n", build.log.join("\n"))));
    // The live stream: the output as printed (`  . `), then the same lines after the result.
    let live = follower.join().unwrap();
    assert_eq!(live.code, 200, "{live}");
    let lines: Vec<String> = live.text().lines().map(str::to_string).collect();
    assert_eq!(from(&lines, &failed, want.len()), &want[..], "live: {:#?}", &lines[lines.len().saturating_sub(30)..]);
    assert!(lines.contains(&"  . line 1".to_string()), "every output line went live as printed");
    assert_eq!(lines.last().map(String::as_str), Some("failed"));
}

#[test]
fn terminal_sequences_are_cleaned_stripped_from_text_and_coloured_on_pages() {
    let b = Backend::start(1, &[], &[]);
    // First a megabyte of ESC on one line (its start falls out of the 256 KiB tail: counted,
    // not shown), then colour, a title, erase, carriage return, BEL, backspace, a hidden cursor,
    // a DCS string, and a line ending inside a sequence.
    let script = r"head -c 1000000 /dev/zero | tr '\0' '\033'; echo
printf '\033[1;31merror:\033[0m undefined \033]0;pwned\007reference\033[2K\r to foo\n'
printf 'bell\a back\bspace \033[?25l\033P1;2q\033\\end\n'
printf 'open \033[31'
exit 1
";
    let yml = format!("step: \"paint \\e[32mgreen\\e[0m \\e]0;t\\a title\"\nshell: |\n{}", indent(script, 2));
    let (git, _sha, build) = b.build("acme/escapes", &[("integration.yml", &yml)], "escapes");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    // Written out by hand: SGR kept, every other sequence and control gone, the open one dropped.
    let stored = [
        "- paint \u{1b}[32mgreen\u{1b}[0m  title".to_string(),
        result_of(&build.log, "head -c 1000000 /dev/zero | tr '\\0' '\\033'; echo...", "exit code 1"),
        "[failed]   . (1 earlier output lines dropped)".into(),
        "[failed]   . \u{1b}[1;31merror:\u{1b}[0m undefined reference to foo".into(),
        "[failed]   . bell backspace end".into(),
        "[failed]   . open ".into(),
    ];
    assert_eq!(build.log[1..], stored[..], "{:#?}", build.log);

    // Text: no escape at all.
    let r = b.hook.get(&format!("/status/{}", git.name));
    assert_eq!(r.code, 412);
    let text = r.text();
    let plain: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        plain,
        vec![
            "- paint green  title",
            stored[1].as_str(),
            "[failed]   . (1 earlier output lines dropped)",
            "[failed]   . error: undefined reference to foo",
            "[failed]   . bell backspace end",
            "[failed]   . open ",
        ]
    );
    assert!(text.chars().all(|c| c == '\n' || c == '\t' || !c.is_control()), "{text:?}");
    let followed = http(b.hook.addr, "GET", &format!("/status/{}?follow=1&id={}", git.name, build.id), &[], b"");
    assert_eq!(followed.text(), format!("{text}failed\n"), "the follow stream is the same text");
    // JSON keeps the lines as stored.
    let j = b.hook.get_json(&format!("/status/{}", git.name)).json();
    assert_eq!(j["log"][4], serde_json::json!(stored[3]));

    // The page: colours as classed spans, text escaped, no control character.
    let page = http(b.hook.addr, "GET", &format!("/builds/{}", build.id), &[("Accept", "text/html")], b"");
    let html = page.text();
    assert!(html.contains("[failed]   . <span class=\"tc1 tb\">error:</span> undefined reference to foo"), "{html}");
    assert!(html.contains("- paint <span class=\"tc2\">green</span>  title"), "{html}");
    assert!(html.contains("<h2>Why it failed in step <b>paint green  title</b></h2>"), "{html}");
    let controls: Vec<(usize, char)> = html.char_indices().filter(|(_, c)| *c != '\n' && *c != '\t' && c.is_control()).collect();
    assert!(controls.is_empty(), "control characters reached the page: {controls:?} in {html}");
}

#[test]
fn a_step_timeout_kills_its_snippet_and_later_steps_follow_the_usual_rules() {
    let b = Backend::start(1, &[], &[]);
    let pidfile = b.root().join("bg.pid");
    let slow = "echo started; sleep 300 & echo $! > \"$PIDFILE\"; wait";
    let yml = format!(
        "- step: slow\n  timeout: 2\n  env: {{PIDFILE: '{}'}}\n  shell:\n    - '{slow}'\n    - no-skip echo same-step\n\
         - step: after\n  shell:\n    - echo skipped\n    - no-skip echo cleanup\n",
        pidfile.display()
    );
    let (_git, sha, build) = b.build("acme/step-timeout", &[("integration.yml", &yml)], "step timeout");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    let prefix = format!("[failed] {} (", cut(slow));
    let result = build.log.get(2).cloned().unwrap_or_default();
    let secs: u64 = result
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(" seconds, timed out)"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a timed-out line: {result:?} in {:#?}", build.log));
    assert!(secs >= 2, "killed before its 2 seconds: {result}");
    assert_eq!(
        build.log,
        vec![
            format!("- commit {} (step timeout)", &sha[..10]),
            "- slow".to_string(),
            result.clone(),
            "[failed]   . started".into(),
            "* step 1 (\"slow\") timed out after 2 seconds".into(),
            "[skipped] echo same-step".into(),
            "- after".into(),
            "[skipped] echo skipped".into(),
            "[passed] echo cleanup (0 seconds, exit code 0)".into(),
        ]
    );
    let slave_log = b.slaves[0].log();
    let timed_out = events(&slave_log, "step.timed_out");
    assert_eq!(timed_out.len(), 1, "{slave_log}");
    for (key, want) in [
        ("repo", "acme/step-timeout"),
        ("branch", "main"),
        ("sha", &sha[..10]),
        ("slave", "slave-0"),
        ("build", &build.id),
        ("step", "1"),
        ("seconds", "2"),
    ] {
        assert_eq!(kv(timed_out[0], key).as_deref(), Some(want), "{key} in {}", timed_out[0]);
    }
    wait_killed(&pidfile);
}

#[test]
fn a_timeout_past_the_build_timeout_or_not_whole_seconds_fails_with_the_step_and_the_key() {
    let b = Backend::start(1, &[], &[("SLAVE_BUILD_TIMEOUT", "600")]);
    for (i, value) in ["601", "0", "1.5", "ten"].iter().enumerate() {
        let yml = format!("- step: ok\n  shell: \"true\"\n- step: slow\n  timeout: {value}\n  shell: echo never\n");
        let (_git, sha, build) = b.build(&format!("acme/bad-timeout-{i}"), &[("integration.yml", &yml)], "bad");
        assert_eq!(build.state, "failed", "{value}: {:#?}", build.log);
        assert_eq!(
            build.log,
            vec![
                format!("- commit {} (bad)", &sha[..10]),
                "* integration.yml line 4, step 2 (\"slow\"): \"timeout\" must be a whole number of seconds from 1 to 600 (SLAVE_BUILD_TIMEOUT)"
                    .to_string()
            ],
            "{value}"
        );
    }
}
