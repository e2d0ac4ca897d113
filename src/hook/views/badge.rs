//! Build badges: a shields.io-style SVG (label "build", the state, its
//! colour), text widths computed from a table of Verdana 11px advances so no
//! font or asset is fetched. No I/O.

use super::html::escape;

/// What a badge says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadgeState {
    Passing,
    Failing,
    Running,
    Canceled,
    Unknown,
}

impl BadgeState {
    /// From a build record's `state` (`None`: never pushed).
    pub fn of(state: Option<&str>) -> BadgeState {
        match state {
            Some("passed") => BadgeState::Passing,
            Some("failed") => BadgeState::Failing,
            Some("queued" | "running") => BadgeState::Running,
            Some("canceled") => BadgeState::Canceled,
            _ => BadgeState::Unknown,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            BadgeState::Passing => "passing",
            BadgeState::Failing => "failing",
            BadgeState::Running => "running",
            BadgeState::Canceled => "canceled",
            BadgeState::Unknown => "unknown",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            BadgeState::Passing => "#4c1",
            BadgeState::Failing => "#e05d44",
            BadgeState::Running => "#dfb317",
            BadgeState::Canceled | BadgeState::Unknown => "#9f9f9f",
        }
    }
}

/// Advance width of a character in Verdana at 11px (shields.io's font), in
/// tenths of a pixel; characters outside the table count as a wide letter.
fn advance(c: char) -> u32 {
    match c {
        'i' | 'l' | '|' | '\'' => 30,
        'j' => 38,
        'f' | ' ' => 39,
        't' => 43,
        'r' | '(' | ')' | '[' | ']' => 47,
        's' => 57,
        'c' | 'z' => 58,
        '-' | '.' | ',' | ':' | ';' => 45,
        'e' | 'k' | 'v' | 'x' | 'y' => 65,
        'a' | 'o' => 67,
        'b' | 'd' | 'g' | 'h' | 'n' | 'p' | 'q' | 'u' => 70,
        '0'..='9' | '_' => 70,
        'w' => 90,
        'm' => 107,
        'A'..='Z' => 75,
        _ => 75,
    }
}

/// Width of `text` in whole pixels.
pub fn text_width(text: &str) -> u32 {
    text.chars().map(advance).sum::<u32>().div_ceil(10)
}

/// The SVG of a badge `label | state`, shields' "flat" geometry: 20 px high,
/// 5 px of padding each side of each text, a gradient and rounded corners.
pub fn svg(label: &str, state: BadgeState) -> String {
    let value = state.word();
    let (lw, vw) = (text_width(label) + 10, text_width(value) + 10);
    let total = lw + vw;
    let (label_x, value_x) = (lw * 10 / 2, (lw * 2 + vw) * 10 / 2);
    let (label_len, value_len) = (text_width(label) * 10, text_width(value) * 10);
    let (label, colour) = (escape(label), state.colour());
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{label}: {value}"><title>{label}: {value}</title><linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient><clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath><g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{vw}" height="20" fill="{colour}"/><rect width="{total}" height="20" fill="url(#s)"/></g><g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" text-rendering="geometricPrecision" font-size="110"><text aria-hidden="true" x="{label_x}" y="150" fill="#010101" fill-opacity=".3" transform="scale(.1)" textLength="{label_len}">{label}</text><text x="{label_x}" y="140" transform="scale(.1)" fill="#fff" textLength="{label_len}">{label}</text><text aria-hidden="true" x="{value_x}" y="150" fill="#010101" fill-opacity=".3" transform="scale(.1)" textLength="{value_len}">{value}</text><text x="{value_x}" y="140" transform="scale(.1)" fill="#fff" textLength="{value_len}">{value}</text></g></svg>"##
    )
}

/// A strong ETag for a body: its CRC-32, quoted.
pub fn etag(body: &str) -> String {
    format!("\"{:08x}\"", crc32fast::hash(body.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_words() {
        assert_eq!(BadgeState::of(Some("passed")).word(), "passing");
        assert_eq!(BadgeState::of(Some("failed")).word(), "failing");
        assert_eq!(BadgeState::of(Some("running")).word(), "running");
        assert_eq!(BadgeState::of(Some("queued")).word(), "running");
        assert_eq!(BadgeState::of(None).word(), "unknown");
    }

    #[test]
    fn widths_follow_the_text() {
        // "build" in Verdana 11px: b 7.0 + u 7.0 + i 3.0 + l 3.0 + d 7.0 = 27 px.
        assert_eq!(text_width("build"), 27);
        assert!(text_width("passing") < text_width("mmmmmmm"));
        let s = svg("build", BadgeState::Passing);
        assert!(s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"") && s.ends_with("</svg>"));
        // label 27+10, value "passing" (7.0+6.7+5.7+5.7+3.0+7.0+7.0 = 42.1 → 43)+10
        assert!(s.contains("width=\"90\""), "{s}");
        assert!(s.contains("fill=\"#4c1\""));
    }

    #[test]
    fn labels_are_escaped_and_etags_change_with_the_body() {
        assert!(svg("a<b&\"", BadgeState::Unknown).contains("a&lt;b&amp;&quot;"));
        assert_ne!(etag(&svg("build", BadgeState::Passing)), etag(&svg("build", BadgeState::Failing)));
    }
}
