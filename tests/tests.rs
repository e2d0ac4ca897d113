//! The one integration-test binary of ci-backend (`autotests = false`): real redis-server,
//! real git, real bash, the real `hook` and `slave` binaries over real HTTP. Every test owns
//! its Redis and temp directory, so the areas run in parallel.

/// Redis, hook, slave, git repos, HTTP and RESP clients, signatures, `wait_for`.
mod harness;

/// Every sample payload of tests/fixtures/webhooks answered as the SPEC says; buildable ones
/// built and read back as text and JSON; routing by hints.
mod webhooks;

/// GitHub sha256/sha1, Gitea/Forgejo bare hex, GitLab token, bearer in any case; wrong, missing,
/// other key → 403; a configured token logged as its fingerprint only; the generated token
/// shared through Redis; `POST /build`: a bearer token or a fresh signed body.
mod signatures;

/// Malformed bodies → 400, over HOOK_MAX_BODY → 413, hostile bytes (each with its status and
/// JSON reason) and idle sockets.
mod bad_input;

/// integration.yml: keys, step environment, no-skip, skipped, debug, cwd, errors, timeout,
/// huge output.
mod integration;

/// CRC32(repo) mod N routing with three slaves; the cache survives between builds; X-Reset.
mod stickiness;

/// Index claims, replacement of a killed slave, the hook's N, scale-down re-routing.
mod membership;

/// SIGKILL mid-build, Redis stopped and restarted, SIGTERM with and without enough grace.
mod faults;

/// One pending build per repo+branch; redelivered delivery ids.
mod coalescing;

/// HTTP abuse over raw sockets: lying Content-Length, over-limit bodies, heads over 64 KiB and an
/// endless header line, slow, trickling and idle clients, a full request queue (peak memory
/// measured), pipelining, invalid UTF-8, other methods — the hook keeps serving pushes.
mod http_abuse;

/// One pushed commit fetched by one protocol v2 request (file:// and a real smart-HTTP server):
/// no git fetch, one POST, the mirror whole; a hostile answer makes the slave use git, in bounds.
mod pack_fetch;

/// A mirror repacked at git's own `gc --auto` thresholds by the build that fetched: one pack,
/// no loose object, every object kept (also those no ref reaches).
mod mirror_upkeep;

/// Hostile repository and branch names: `..`, leading `/`, long, control characters, shell
/// metacharacters, leading `-`, unicode — nothing outside the cache, no option to git.
mod hostile_names;

/// The token, the git password and the Redis password never in logs, answers or build
/// environments; `secrets:` values masked in recorded logs.
mod secrets;

/// Secrets per repository (SLAVE_SECRETS_FILE): granted by repository and branch glob, first
/// line first; other repositories, forks and branches get none; masked in the record and the live
/// stream; container steps; a bad file's mode, owner or line stops the slave at start.
mod repo_secrets;

/// Builds that misbehave (setsid daemon, closed stdout, full workspace disk, never ending):
/// each ends with a status and the next build on the same slave passes.
mod misbehaving;

/// Redis's persistence settings in /metrics (`ci_redis_durable`) and the log, followed as they
/// change; CONFIG refused.
mod durability;

/// Deterministic property tests of the payload and integration.yml parsers: 20,000 mutations
/// each, alias bombs, 100k-deep JSON and 10k-deep YAML nesting.
mod fuzz;

/// A test per defect found on the slave's side: membership after a full restart, poison
/// jobs, results Redis refuses, orphaned builds.
mod regressions;

/// Membership as a property over seeded random schedules of kills, pauses, full restarts,
/// scale changes and Redis restarts, with pushes flowing.
mod membership_property;

/// `make run` (scripts/run-local.sh): a taken port, the stop order, fixed local indexes.
mod run_local;

/// History: the last HISTORY_KEEP builds per branch (`/history`, `/status?id=`), older records
/// deleted; `/repos`.
mod history;

/// The dashboard in headless Chromium (driven over the DevTools pipe: logins and clicks): branch
/// order and titles, deleted branches and closed requests unlisted, self-refresh, Rebuild and
/// Cancel with CSRF; listings that never read a log; badges parsed by xmllint, HOOK_READ_TOKEN.
mod dashboard;

/// Commit statuses to GitHub, Gitea and GitLab (a local HTTP receiver per forge): pending then
/// the result, exact requests; named `<SLAVE_STATUS_CONTEXT>/<event>`, GitLab's with their `ref`; a forge answering 500 or never answering delays no build and is
/// retried a bounded number of times; a payload naming another host gets no token.
mod forge_status;

/// A forge behind a private CA: statuses reach it over TLS with SLAVE_CA_FILE only; a CA file
/// the slave cannot take stops it at start.
mod private_ca;

/// Live logs followed over chunked HTTP as the steps print them; 200 followers; a
/// follower that stops reading; HOOK_MAX_FOLLOWERS.
mod follow;

/// Why a build failed: a failed snippet's output tail without `debug` (record, /status, follow
/// stream, page), terminal sequences cleaned, stripped from text and coloured on pages, `timeout:`.
mod why_failed;

/// Cancelling: POST /cancel and HOOK_CANCEL_RUNNING.
mod cancel;

/// Pull/merge requests (refs/pull/<N>/head, fork trust) and tag builds.
mod pulls;

/// Events: `push`, `tag`, `pull_request`, `manual` in records, `/status` and `/history` JSON, the
/// build page and the steps' `CI_EVENT`; jobs and records of the previous version (no `event`).
mod events;

/// Manual runs: `POST /build` parameters (`{"env": {...}}`, bearer or signed) in bare and container
/// steps, the record and the page; each refused body's 400 and reason; `?id=N` builds N's commit,
/// never another repository's; a run with parameters is never coalesced away.
mod manual;

/// Scaling: executors beside a long build, one branch at a time, stealing (exactly once, the
/// home cache kept).
mod scaling;

/// HOOK_ROUTING=mod|jump: ENQUEUE's selection held against routing's rule, a jump hook's
/// routes, the agreement through `ci:routing`, re-routing of a vanished index by the stored rule.
mod routing;

/// Redis failover through Sentinel (master SIGKILLed with pushes flowing, nothing
/// answered 2xx lost); REDIS_SENTINELS/REDIS_MASTER_NAME both or neither; REDIS_MIN_REPLICAS.
mod failover;

/// Container steps (`image:`) on a real Docker engine (skipped, with one line, without one): in the
/// image on the checkout as the build user, nothing left behind, a missing image's reason.
mod containers;

/// What one build can plant for the next: hooks, fsmonitor, filters and attributes written into
/// another branch's checkout run in none of its checkouts.
mod containment;

/// `[skip ci]` / `[ci skip]` in a pushed head commit's message: 200 and nothing written, on
/// each forge; other commits' messages and requests' titles do not count; a 25 MB push.
mod skip_ci;

/// The README's per-forge examples (GitHub, Gitea/Forgejo, GitLab: push and pull/merge
/// request), read out of README.md and run against `make run`; the errors they can hit.
mod readme_examples;

/// The reference against the code: /metrics against the documented metrics, build records
/// against their documented fields, `make help` against scripts/deps.sh.
mod docs_truth;

/// Schedules (`HOOK_CRON`): one build per schedule and minute however many hooks run (the claim
/// raced through `hook::cron::fire`, then two real hooks at the next wall-clock minute), event
/// `cron`, a never-pushed branch only warned about, bad lines refusing to start.
mod schedules;
/// `when:` on a step: branch globs (pushes, tags, requests), events, changed paths (push,
/// new branch, force-push, request against its merge base, coalesced build), `[skipped]` lines,
/// parse errors.
mod when;

/// `inputs:` on a step: a pass is reused (`[reused] <title> (passed in build <id>)`, not run)
/// while its inputs, snippets and repository are the same; a change under its inputs runs it
/// again; `inputs: []`, a failed step, another repository and a fork never reuse; a push whose
/// steps are all reused is not checked out; a follower sees it.
mod inputs;
