//! How a slave names what it makes on the Docker engine: the labels its
//! sweep finds them by, unique names, and where the checkout is mounted.

/// Where the checkout is inside every container (the same for every image).
pub const WORKSPACE: &str = "/ci/checkout";

/// The label every container and network of a slave carries: its host and
/// cache, so a restarted slave finds what it left.
pub const SLAVE_LABEL: &str = "ci-backend.slave";
/// The label naming the build a container or network belongs to (`warm`:
/// started for a branch's next build).
pub const BUILD_LABEL: &str = "ci-backend.build";

/// The labels of what a slave makes for a build: the sweep finds them by the first.
pub(crate) fn labels(slave_label: &str, build: &str) -> Vec<(String, String)> {
    vec![(SLAVE_LABEL.to_string(), slave_label.to_string()), (BUILD_LABEL.to_string(), build.to_string())]
}

/// Eight hex digits, so two containers of one build never share a name.
pub(crate) fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
