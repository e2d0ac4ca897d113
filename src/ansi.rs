//! Terminal escape sequences in build output: the one rule for what a
//! sequence is ([`tokens`]), and the readings of a line by it. The slave
//! stores [`clean`] lines (text and SGR colour sequences, nothing else of a
//! terminal's); text endpoints [`strip`] them to text; pages render the
//! tokens as HTML (`hook::views::terminal`: the basic colours and bold as
//! spans).
//!
//! The rule (ECMA-48, as terminals parse it): `ESC [` parameters,
//! intermediates and a final byte is a CSI sequence (SGR when its final is `m`
//! and its parameters are digits, `;` and `:` only); `ESC ]`, `ESC P`, `ESC X`,
//! `ESC ^` and `ESC _` open a string ended by BEL or ST (`ESC \`); any other
//! `ESC` takes its intermediates and one final byte. The 8-bit forms (U+009B
//! CSI, U+009D OSC, …) read the same. A sequence ends at the end of its line:
//! an unterminated one is dropped whole, and a byte that cannot belong to it
//! ends it there. Every other C0 control (tab excepted), DEL and C1 control is
//! dropped. One pass over the line, no backtracking: linear in its length.

/// What a line is made of.
#[derive(Debug, PartialEq, Eq)]
pub enum Token<'a> {
    /// Printable text (tabs included).
    Text(&'a str),
    /// An SGR sequence: its parameters (`1;31`), without `ESC [` and `m`.
    Sgr(&'a str),
    /// Anything else a terminal would act on: dropped by every reading.
    Control,
}

const ESC: char = '\u{1b}';
const BEL: char = '\u{7}';
const ST: char = '\u{9c}';

/// A line's tokens, in order.
pub struct Tokens<'a> {
    line: &'a str,
    at: usize,
}

/// `line`'s tokens by the rule (a newline in it is a control like any other).
pub fn tokens(line: &str) -> Tokens<'_> {
    Tokens { line, at: 0 }
}

/// Printable here: not a C0 control (tab excepted), DEL or a C1 control.
fn printable(c: char) -> bool {
    c == '\t' || !(c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c))
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let rest = &self.line[self.at..];
        let first = rest.chars().next()?;
        if printable(first) {
            let end = rest.find(|c: char| !printable(c)).unwrap_or(rest.len());
            self.at += end;
            return Some(Token::Text(&rest[..end]));
        }
        let after = &rest[first.len_utf8()..];
        let (token, used) = match first {
            ESC => escape(after),
            '\u{9b}' => csi(after),
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => (Token::Control, string(after)),
            _ => (Token::Control, 0),
        };
        self.at += first.len_utf8() + used;
        Some(token)
    }
}

/// After an `ESC`: the sequence it opens and how many bytes of `rest` it takes.
fn escape(rest: &str) -> (Token<'_>, usize) {
    let Some(c) = rest.chars().next() else { return (Token::Control, 0) };
    match c {
        '[' => {
            let (token, used) = csi(&rest[1..]);
            (token, 1 + used)
        }
        ']' | 'P' | 'X' | '^' | '_' => (Token::Control, 1 + string(&rest[1..])),
        _ => {
            // nF: intermediates (0x20–0x2F), then one final byte (0x30–0x7E).
            let bytes = rest.as_bytes();
            let mut i = 0;
            while i < bytes.len() && (0x20..=0x2f).contains(&bytes[i]) {
                i += 1;
            }
            if i < bytes.len() && (0x30..=0x7e).contains(&bytes[i]) {
                i += 1;
            }
            (Token::Control, i)
        }
    }
}

/// After a CSI introducer: parameters (0x30–0x3F), intermediates (0x20–0x2F)
/// and a final byte (0x40–0x7E). Anything else ends the sequence before it.
fn csi(rest: &str) -> (Token<'_>, usize) {
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() && (0x20..=0x3f).contains(&bytes[i]) {
        i += 1;
    }
    if i < bytes.len() && (0x40..=0x7e).contains(&bytes[i]) {
        let params = &rest[..i];
        let sgr = bytes[i] == b'm' && params.bytes().all(|b| b.is_ascii_digit() || b == b';' || b == b':');
        return (if sgr { Token::Sgr(params) } else { Token::Control }, i + 1);
    }
    (Token::Control, i)
}

/// A control string's body up to and with its end (BEL, `ESC \`, ST); an
/// `ESC` that is not `ESC \` ends it before the `ESC`; unterminated, the rest
/// of the line.
fn string(rest: &str) -> usize {
    for (i, c) in rest.char_indices() {
        match c {
            BEL | ST => return i + c.len_utf8(),
            ESC if rest[i + 1..].starts_with('\\') => return i + 2,
            ESC => return i,
            _ => {}
        }
    }
    rest.len()
}

/// A line as the slave stores it: its text and its SGR sequences, every
/// other sequence and control dropped. Never longer than `line`.
pub fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for token in tokens(line) {
        match token {
            Token::Text(t) => out.push_str(t),
            Token::Sgr(p) => {
                out.push_str("\u{1b}[");
                out.push_str(p);
                out.push('m');
            }
            Token::Control => {}
        }
    }
    out
}

/// Text only: each line of `text` without its sequences and controls,
/// newlines kept. Never longer than `text`.
pub fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        for token in tokens(line) {
            if let Token::Text(t) = token {
                out.push_str(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No byte a terminal acts on: no C0 but tab, no DEL, no C1.
    fn inert(text: &str) -> bool {
        text.chars().all(printable)
    }

    #[test]
    fn sgr_is_kept_and_every_other_sequence_dropped() {
        // Written out by hand from ECMA-48's forms, not from the code.
        let cases: &[(&str, &str, &str)] = &[
            ("plain\ttab", "plain\ttab", "plain\ttab"),
            ("\x1b[32mok\x1b[0m", "\x1b[32mok\x1b[0m", "ok"),
            ("\x1b[1;31merror:\x1b[m x", "\x1b[1;31merror:\x1b[m x", "error: x"),
            ("a\x1b[2Kb\x1b[1Gc", "abc", "abc"),                            // CSI erase, cursor
            ("\x1b[?25lhidden\x1b[?25h", "hidden", "hidden"),               // private CSI
            ("\x1b[>4;1mkeys", "keys", "keys"),                             // private marker: not SGR
            ("\x1b]0;title\x07x", "x", "x"),                                // OSC, BEL
            ("\x1b]8;;http://e.x\x1b\\link\x1b]8;;\x1b\\", "link", "link"), // OSC 8, ST
            ("\x1bPq#0;2;0;0;0\x1b\\after", "after", "after"),              // DCS
            ("\x1b(Bx\x1b7y\x1b8z\x1bc", "xyz", "xyz"),                     // nF, Fp, Fs
            ("a\rb\x08c\x00d\x7fe\x07f", "abcdef", "abcdef"),               // lone C0, DEL
            ("\u{9b}31mred\u{9d}0;t\u{9c}!\u{85}", "\x1b[31mred!", "red!"), // 8-bit CSI (stored 7-bit), OSC, ST, NEL
            ("é\x1b[31m中", "é\x1b[31m中", "é中"),
        ];
        for (line, cleaned, text) in cases {
            assert_eq!(clean(line), *cleaned, "clean {line:?}");
            assert_eq!(strip(line), *text, "strip {line:?}");
            assert_eq!(strip(&clean(line)), *text, "strip after clean {line:?}");
        }
    }

    #[test]
    fn unterminated_and_split_sequences_leave_no_escape() {
        for line in ["x\x1b", "x\x1b[", "x\x1b[31", "x\x1b[31;", "x\x1b]0;title", "x\x1bP", "x\x1b(", "x\u{9b}", "x\x1b]8;;\x1b"] {
            assert_eq!(clean(line), "x", "{line:?}");
            assert_eq!(strip(line), "x", "{line:?}");
        }
        // A sequence split over two lines: the first half dropped, the second is text.
        assert_eq!(strip("a\x1b[3\n1mb"), "a\n1mb");
        assert_eq!(clean("1mb"), "1mb");
        // A control inside a sequence ends it there.
        assert_eq!(clean("\x1b[31\x07m"), "m");
        assert_eq!(clean("\x1b]0;t\x1b[32mgreen"), "\x1b[32mgreen");
        assert_eq!(clean("\x1b[3\u{e9}1m"), "\u{e9}1m");
    }

    /// Whether every ESC in `text` opens an SGR sequence (`ESC [` digits, `;`, `:`, then `m`).
    fn only_sgr(text: &str) -> bool {
        let mut rest = text;
        while let Some(at) = rest.find('\u{1b}') {
            let Some(after) = rest[at + 1..].strip_prefix('[') else { return false };
            let end = after.find(|c: char| !(c.is_ascii_digit() || c == ';' || c == ':')).unwrap_or(after.len());
            if !after[end..].starts_with('m') {
                return false;
            }
            rest = &after[end + 1..];
        }
        true
    }

    #[test]
    fn random_lines_hold_the_rule_s_invariants() {
        // Seeded xorshift over an alphabet dense in sequence bytes.
        let alphabet: Vec<char> =
            "\u{1b}\u{1b}\u{1b}[[]]\\;;:0139m mPX^_(?>\u{7}\u{8}\r\t\u{0}\u{7f}\u{9b}\u{9c}\u{9d}\u{85}aé中".chars().collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let len = (next() % 40) as usize;
            let line: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let (cleaned, text) = (clean(&line), strip(&line));
            assert!(inert(&text), "strip {line:?} = {text:?}");
            assert!(only_sgr(&cleaned) && cleaned.chars().all(|c| c == '\u{1b}' || printable(c)), "clean {line:?} = {cleaned:?}");
            assert_eq!(clean(&cleaned), cleaned, "clean is idempotent on {line:?}");
            assert_eq!(strip(&cleaned), text, "clean keeps the text of {line:?}");
            assert!(text.len() <= line.len() && cleaned.len() <= line.len(), "{line:?}");
        }
    }

    #[test]
    fn a_megabyte_of_escapes_is_handled_in_one_pass() {
        for unit in ["\x1b", "\x1b[", "\x1b]", "\x1b[1;", "\x1b[31m", "\u{9b}", "\x1b\x1b[", "\x07\x1b\\"] {
            let line = unit.repeat((1 << 20) / unit.len());
            let cleaned = clean(&line);
            assert!(cleaned.len() <= line.len());
            assert!(inert(&strip(&line)), "{unit:?}");
            assert!(inert(&strip(&cleaned)), "{unit:?}");
            // Only SGR survives a clean: once stripped, nothing.
            assert_eq!(strip(&cleaned), "", "{unit:?}");
        }
    }
}
