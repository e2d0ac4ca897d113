//! A self-hosted forge behind a private certificate authority: the slave's commit status
//! reaches it over TLS when SLAVE_CA_FILE names the CA, and not otherwise (the public roots
//! built into the slave do not know it). The forge's API is the harness's [`TlsServer`]
//! (`openssl s_server`) with a certificate for 127.0.0.1 that a CA made here signed; what it
//! received is read from its output, and the test answers through its input. A CA file the slave cannot take stops it.

use crate::harness::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;

/// Runs openssl with `args` in `dir`; panics when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`ca.crt`) and a certificate for 127.0.0.1 it signed (`srv.crt`, `srv.key`) in `dir`.
fn certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let ca = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"];
    openssl(
        dir,
        &[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=private-ca", "-days", "2"], &ca].concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &["-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1"],
            &["-addext", "subjectAltName=IP:127.0.0.1"],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.crt",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
        ],
    );
}

/// A TLS server with the certificate the CA signed; what it prints goes to `<name>.out`.
fn forge(dir: &Path, name: &str) -> TlsServer {
    TlsServer::start(&dir.join("srv.crt"), &dir.join("srv.key"), dir.join(format!("{name}.out")))
}

/// A backend whose one slave posts GitHub statuses to `server` with `token`, and `extra`.
fn backend(server: &TlsServer, token: &str, extra: &[(&str, &str)]) -> Backend {
    let redis = Redis::start();
    let forges = format!("github https://127.0.0.1:{}/api/v3 {token}", server.port);
    let mut env = vec![("SLAVE_FORGES", forges.as_str()), ("SLAVE_FORGE_ATTEMPTS", "1"), ("SLAVE_FORGE_TIMEOUT", "5")];
    env.extend_from_slice(extra);
    let hook = Hook::start(&redis, &[]);
    let slaves = vec![Slave::start(&redis, &env)];
    hook.wait_slaves("slave", 1);
    Backend { slaves, hook, redis }
}

/// Pushes a passing commit of `acme/private` naming `server` as its forge; its sha.
fn push(b: &Backend, server: &TlsServer) -> String {
    let git = b.repo("acme/private");
    git.write("integration.yml", "- step: ok\n  shell: 'true'\n");
    let sha = git.commit("on a private forge");
    git.push();
    let forge = format!("https://127.0.0.1:{}", server.port);
    let mut v = github_push(&git.name, &git.file_url(), &git.branch, &sha, &git.message(&sha), &git.default_branch);
    v["repository"]["statuses_url"] = json!(format!("{forge}/api/v3/repos/{}/statuses/{{sha}}", git.name));
    v["repository"]["html_url"] = json!(format!("{forge}/{}", git.name));
    let r = b.hook.send_github("/", "push", v.to_string().as_bytes(), &[]);
    assert_eq!(r.code, 202, "{r}");
    sha
}

#[test]
fn a_forge_behind_a_private_ca_gets_its_status_only_with_slave_ca_file() {
    let dir = fresh_dir(&test_name());
    certificates(&dir);
    let ca = dir.join("ca.crt").to_string_lossy().into_owned();

    // The public roots: the handshake fails, nothing reaches the forge.
    let server = forge(&dir, "without");
    let b = backend(&server, "ghp-private-1", &[]);
    let sha = push(&b, &server);
    let failed = wait_for("the status given up", LONG, || {
        let log = b.slaves[0].log();
        events(&log, "forge.status_failed").first().map(|l| l.to_string()).ok_or_else(|| events(&log, "forge.status").join("\n"))
    });
    assert!(failed.contains(&sha[..10]), "{failed}");
    let log = b.slaves[0].log();
    let tried = events(&log, "forge.status").into_iter().find(|l| l.contains("code=-")).unwrap_or_else(|| panic!("{log}"));
    assert!(tried.to_lowercase().contains("certificate") || tried.contains("UnknownIssuer"), "{tried}");
    assert!(!server.output().contains("POST"), "{}", server.output());
    drop(b);
    drop(server);

    // SLAVE_CA_FILE naming the CA: the status arrives over TLS, with its token, and is answered.
    let mut server = forge(&dir, "with");
    let b = backend(&server, "ghp-private-2", &[("SLAVE_CA_FILE", &ca)]);
    let started = events(&b.slaves[0].log(), "slave.trust").join("\n");
    assert!(started.contains("certificates=1"), "{started}");
    let sha = push(&b, &server);
    let path = format!("POST /api/v3/repos/acme/private/statuses/{sha} HTTP/1.1");
    let request = server.wait_until("the status request", |out| out.split(&path).nth(1).is_some_and(|rest| rest.contains("\r\n\r\n")));
    assert!(request.to_lowercase().contains("authorization: bearer ghp-private-2"), "{request}");
    server.send("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let sent = wait_for("the status answered", LONG, || {
        let log = b.slaves[0].log();
        events(&log, "forge.status").into_iter().find(|l| l.contains("code=201")).map(|l| l.to_string()).ok_or(log.clone())
    });
    assert!(sent.contains(&sha[..10]), "{sent}");
}

#[test]
fn a_ca_file_the_slave_cannot_take_stops_it_at_start() {
    let dir = fresh_dir(&test_name());
    certificates(&dir);
    let redis = Redis::start();
    let key = dir.join("srv.key").to_string_lossy().into_owned();
    let missing = dir.join("missing.pem").to_string_lossy().into_owned();
    for (k, (file, says)) in [(key.as_str(), "private key"), (missing.as_str(), "cannot read it")].into_iter().enumerate() {
        let mut cmd = scrubbed(&bin("slave"));
        cmd.env("REDIS_URL", redis.url()).env("SLAVE_CACHE", dir.join("cache")).env("SLAVE_CA_FILE", file).current_dir(&dir);
        let err = dir.join(format!("slave-{k}.err"));
        let mut proc = Proc::spawn("slave (bad CA file)", cmd, dir.join(format!("slave-{k}.out")), err.clone());
        let status = proc.wait_exit(LONG);
        let stderr = std::fs::read_to_string(&err).unwrap();
        assert_eq!(status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains("SLAVE_CA_FILE=") && stderr.contains(says), "{file}: {stderr}");
    }
}
