//! The binaries' manuals, from one source: the clap definitions give the
//! synopsis and the options; a few hand-written [`Section`]s (examples,
//! signals, exit status, environment) give the rest. The same sections end
//! `--help` ([`help`]) and the man page ([`generate`] with [`Generate::Man`],
//! through `clap_mangen`), so the two cannot drift; [`generate`] also writes
//! shell completions (`clap_complete`) for bash, zsh and fish.
//!
//! ```
//! use clap::{CommandFactory, Parser};
//! use manual::{Block, Generate, Section};
//!
//! const SECTIONS: &[Section] = &[Section {
//!     title: "EXAMPLES",
//!     body: &[Block::Example { command: "greet --name Ada", says: "Greets Ada." }],
//! }];
//!
//! /// Greets someone.
//! #[derive(Parser)]
//! #[command(name = "greet", after_long_help = manual::help(SECTIONS))]
//! struct Args {
//!     /// Who to greet.
//!     #[arg(long, default_value = "world")]
//!     name: String,
//! }
//!
//! let mut page = Vec::new();
//! manual::generate(Generate::Man, Args::command(), SECTIONS, &mut page)?;
//! let page = String::from_utf8(page)?;
//! assert!(page.contains(".SH EXAMPLES") && page.contains("greet \\-\\-name Ada"));
//! assert!(Args::command().render_long_help().to_string().contains("Greets Ada."));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt::Write as _;
use std::io::{self, Write};

use clap_mangen::roff::{Roff, bold, roman};

/// A section of the manual after the options, such as `EXAMPLES`.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    /// Its title, in capitals, as man pages have them.
    pub title: &'static str,
    /// What it says, in order.
    pub body: &'static [Block],
}

/// One piece of a [`Section`].
#[derive(Debug, Clone, Copy)]
pub enum Block {
    /// A paragraph.
    Text(&'static str),
    /// A command line, shown as is, and what it does.
    Example {
        /// The command line.
        command: &'static str,
        /// What it does.
        says: &'static str,
    },
    /// A term (a signal, an exit code, a variable) and its meaning.
    Item {
        /// The term.
        term: &'static str,
        /// What it means.
        text: &'static str,
    },
}

/// What [`generate`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// The man page (roff, section 1).
    Man,
    /// Completions for bash.
    Bash,
    /// Completions for zsh.
    Zsh,
    /// Completions for fish.
    Fish,
}

impl Generate {
    /// Its name on the command line: `man`, `bash`, `zsh` or `fish`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Man => "man",
            Self::Bash => "bash",
            Self::Zsh => "zsh",
            Self::Fish => "fish",
        }
    }
}

/// `sections` as plain text, for clap's `after_long_help`: `--help` then
/// ends with what the man page says after its options.
#[must_use]
pub fn help(sections: &[Section]) -> String {
    let mut text = String::new();
    for (index, section) in sections.iter().enumerate() {
        if index > 0 {
            text.push('\n');
        }
        let _ = writeln!(text, "{}:", title_case(section.title));
        for block in section.body {
            match *block {
                Block::Text(paragraph) => {
                    let _ = writeln!(text, "  {paragraph}");
                }
                Block::Example { command, says } => {
                    let _ = writeln!(text, "  $ {command}\n      {says}");
                }
                Block::Item { term, text: meaning } => {
                    let _ = writeln!(text, "  {term}\n      {meaning}");
                }
            }
        }
    }
    text
}

/// `EXIT STATUS` as `Exit status`, the way clap titles its own sections.
fn title_case(title: &str) -> String {
    let lower = title.to_lowercase();
    let mut chars = lower.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Writes `kind` for the command `cmd` to `out`: the man page (name,
/// synopsis, description and options from clap, then `sections`, then the
/// version), or a shell's completions.
///
/// # Errors
/// When writing to `out` fails.
pub fn generate(
    kind: Generate,
    mut cmd: clap::Command,
    sections: &[Section],
    out: &mut dyn Write,
) -> io::Result<()> {
    let name = cmd.get_name().to_owned();
    let shell = match kind {
        Generate::Man => return man_page(cmd, sections, out),
        Generate::Bash => clap_complete::Shell::Bash,
        Generate::Zsh => clap_complete::Shell::Zsh,
        Generate::Fish => clap_complete::Shell::Fish,
    };
    // Into memory first: clap_complete panics if its writer fails (a closed
    // pipe), and a failure here must be an error, not a panic.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    out.write_all(&script)?;
    out.flush()
}

fn man_page(cmd: clap::Command, sections: &[Section], out: &mut dyn Write) -> io::Result<()> {
    // The sections are in the page already: not again as clap's epilogue.
    let cmd = cmd.after_long_help(None::<&str>).after_help(None::<&str>);
    // clap_mangen's version section needs a version (it panics without one).
    let versioned = cmd.get_version().is_some() || cmd.get_long_version().is_some();
    let man = clap_mangen::Man::new(cmd);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let mut roff = Roff::new();
    for section in sections {
        roff.control("SH", [section.title]);
        for block in section.body {
            match *block {
                Block::Text(paragraph) => {
                    roff.control("PP", []).text([roman(paragraph)]);
                }
                Block::Example { command, says } => {
                    roff.control("TP", []).text([bold(command)]).text([roman(says)]);
                }
                Block::Item { term, text } => {
                    roff.control("TP", []).text([bold(term)]).text([roman(text)]);
                }
            }
        }
    }
    roff.to_writer(out)?;
    if versioned {
        man.render_version_section(out)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTIONS: &[Section] = &[
        Section { title: "EXIT STATUS", body: &[Block::Item { term: "0", text: "Fine." }] },
        Section { title: "SEE ALSO", body: &[Block::Text("tcpserver(1)")] },
    ];

    fn command() -> clap::Command {
        clap::Command::new("demo")
            .version("1.2.3")
            .about("A demonstration.")
            .arg(clap::arg!(--port <N> "The port").default_value("7"))
            .after_long_help(help(SECTIONS))
    }

    #[test]
    fn the_help_text_has_every_section_in_order() {
        assert_eq!(help(SECTIONS), "Exit status:\n  0\n      Fine.\n\nSee also:\n  tcpserver(1)\n");
    }

    #[test]
    fn the_man_page_has_the_options_then_the_sections_once() {
        let mut page = Vec::new();
        generate(Generate::Man, command(), SECTIONS, &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        let at = |needle: &str| page.find(needle).unwrap_or_else(|| panic!("{needle}: {page}"));
        assert!(
            at(".SH OPTIONS") < at(".SH \"EXIT STATUS\"") || at(".SH OPTIONS") < at("EXIT STATUS")
        );
        assert!(at("EXIT STATUS") < at(".SH \"SEE ALSO\"").min(at("SEE ALSO")));
        assert!(page.contains("\\-\\-port"), "{page}");
        assert_eq!(page.matches("tcpserver(1)").count(), 1, "the epilogue is repeated: {page}");
        assert!(page.contains("1.2.3"), "{page}");
    }

    /// clap_mangen's version section would panic on a command without one.
    #[test]
    fn a_command_without_a_version_gets_a_page_without_one() {
        let mut page = Vec::new();
        generate(Generate::Man, clap::Command::new("bare"), SECTIONS, &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains(".SH \"SEE ALSO\"") && !page.contains(".SH VERSION"), "{page}");
    }

    #[test]
    fn completions_name_the_options_for_every_shell() {
        for kind in [Generate::Bash, Generate::Zsh, Generate::Fish] {
            let mut script = Vec::new();
            generate(kind, command(), SECTIONS, &mut script).unwrap();
            let script = String::from_utf8(script).unwrap();
            assert!(script.contains("port"), "{kind:?}: {script}");
        }
    }
}
