//! Log lines as the pages show them: the text escaped, the basic SGR colours
//! (30–37, 90–97; 39 and 0 reset) and bold (1; 22 and 0 reset) as
//! `<span class="tcN tb">` (the classes of [`CSS`], in the page's one style
//! block: the Content-Security-Policy allows no inline style). What a
//! sequence is, is [`crate::ansi`]'s rule; every other sequence is dropped.

use super::html::escape;
use crate::ansi::{tokens, Token};

/// A terminal's colour state, carried from line to line as on a terminal;
/// each line's spans are closed at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Terminal {
    bold: bool,
    /// 0–7: 30–37; 8–15: 90–97.
    fg: Option<u8>,
}

impl Terminal {
    /// Appends `line` (without its newline) to `out` as HTML.
    pub fn line(&mut self, line: &str, out: &mut String) {
        let mut open: Option<Terminal> = None;
        for token in tokens(line) {
            match token {
                Token::Text(t) => {
                    if open != Some(*self) {
                        if open.is_some_and(|o| o.styled()) {
                            out.push_str("</span>");
                        }
                        if self.styled() {
                            self.span(out);
                        }
                        open = Some(*self);
                    }
                    out.push_str(&escape(t));
                }
                Token::Sgr(params) => self.apply(params),
                Token::Control => {}
            }
        }
        if open.is_some_and(|o| o.styled()) {
            out.push_str("</span>");
        }
    }

    fn styled(&self) -> bool {
        self.bold || self.fg.is_some()
    }

    fn span(&self, out: &mut String) {
        let classes: Vec<String> = self.fg.map(|n| format!("tc{n}")).into_iter().chain(self.bold.then(|| "tb".to_string())).collect();
        out.push_str(&format!("<span class=\"{}\">", classes.join(" ")));
    }

    /// One SGR sequence's parameters; those not rendered are skipped, with
    /// the arguments of extended colours (`38;5;n`, `38;2;r;g;b`).
    fn apply(&mut self, params: &str) {
        let mut codes = params.split(';');
        while let Some(code) = codes.next() {
            if code.contains(':') {
                continue; // sub-parameters: an extended colour or an underline style
            }
            let n: u32 = if code.is_empty() { 0 } else { code.parse().unwrap_or(u32::MAX) };
            match n {
                0 => *self = Terminal::default(),
                1 => self.bold = true,
                22 => self.bold = false,
                30..=37 => self.fg = Some((n - 30) as u8),
                39 => self.fg = None,
                90..=97 => self.fg = Some((n - 90 + 8) as u8),
                38 | 48 | 58 => {
                    let skip = match codes.next() {
                        Some("5") => 1,
                        Some("2") => 3,
                        _ => 0,
                    };
                    for _ in 0..skip {
                        codes.next();
                    }
                }
                _ => {}
            }
        }
    }
}

/// The stylesheet rules of [`Terminal`]'s classes: the 16 colours on a light
/// and on a dark background, and bold.
pub(crate) const CSS: &str = "
.tb{font-weight:700}
.tc0{color:#24292f}.tc1{color:#cf222e}.tc2{color:#116329}.tc3{color:#4d2d00}.tc4{color:#0969da}.tc5{color:#8250df}.tc6{color:#1b7c83}.tc7{color:#6e7781}
.tc8{color:#57606a}.tc9{color:#a40e26}.tc10{color:#1a7f37}.tc11{color:#633c01}.tc12{color:#218bff}.tc13{color:#a475f9}.tc14{color:#3192aa}.tc15{color:#8c959f}
@media (prefers-color-scheme:dark){.tc0{color:#8b949e}.tc1{color:#ff7b72}.tc2{color:#3fb950}.tc3{color:#d29922}.tc4{color:#58a6ff}.tc5{color:#bc8cff}.tc6{color:#39c5cf}.tc7{color:#b1bac4}
.tc8{color:#6e7681}.tc9{color:#ffa198}.tc10{color:#56d364}.tc11{color:#e3b341}.tc12{color:#79c0ff}.tc13{color:#d2a8ff}.tc14{color:#56d4dd}.tc15{color:#f0f6fc}}
";

#[cfg(test)]
mod tests {
    use super::*;

    fn html(lines: &[&str]) -> Vec<String> {
        let mut state = Terminal::default();
        lines
            .iter()
            .map(|l| {
                let mut out = String::new();
                state.line(l, &mut out);
                out
            })
            .collect()
    }

    #[test]
    fn basic_colours_and_bold_are_spans_and_text_is_escaped() {
        assert_eq!(
            html(&["\x1b[31mred\x1b[39m plain \x1b[1;92mbold bright\x1b[22m green\x1b[0m <&>"]),
            vec!["<span class=\"tc1\">red</span> plain <span class=\"tc10 tb\">bold bright</span><span class=\"tc10\"> green</span> &lt;&amp;&gt;"]
        );
        // The state carries to the next line; a span never stays open across one.
        assert_eq!(
            html(&["\x1b[34mblue", "still", "\x1b[mnot"]),
            vec!["<span class=\"tc4\">blue</span>", "<span class=\"tc4\">still</span>", "not"]
        );
        // Extended colours' arguments are not read as colours; unknown codes change nothing.
        assert_eq!(html(&["\x1b[38;5;31mx\x1b[38;2;1;32;3my\x1b[4;7;45mz"]), vec!["xyz"]);
        assert_eq!(html(&["\x1b[38:5:31mx\x1b[99999999999999999999mz"]), vec!["xz"]);
        // SGR with no text after it writes nothing; other sequences never reach the page.
        assert_eq!(html(&["\x1b[1m\x1b[31m"]), vec![""]);
        assert_eq!(html(&["\x1b]0;<script>\x07a\x1b[2J\u{9b}5n"]), vec!["a"]);
    }

    #[test]
    fn every_class_written_is_in_the_stylesheet() {
        let mut line = String::new();
        for code in (30..=37).chain(90..=97) {
            line.push_str(&format!("\x1b[1;{code}mx\x1b[22mx"));
        }
        let out = html(&[&line]).remove(0);
        let mut classes: Vec<&str> = out.split("class=\"").skip(1).flat_map(|s| s.split('"').next().unwrap().split(' ')).collect();
        classes.sort();
        classes.dedup();
        assert_eq!(classes.len(), 17, "{classes:?}");
        for class in classes {
            assert!(CSS.contains(&format!(".{class}{{")), "{class} has no rule");
        }
    }

    #[test]
    fn a_megabyte_of_escapes_renders_inert_and_bounded() {
        for unit in ["\x1b", "\x1b[", "\x1b]", "\x1b[1;", "\x1b[31m", "\u{9b}", "\x1b[31mx\x1b[0m", "<\x1b[1m&"] {
            let line = unit.repeat((1 << 20) / unit.len());
            let out = html(&[&line]).remove(0);
            assert!(out.chars().all(|c| c >= ' ' && !('\u{7f}'..='\u{9f}').contains(&c)), "{unit:?}");
            assert!(out.len() <= 40 * line.len(), "{unit:?}: {} bytes", out.len());
        }
    }
}
