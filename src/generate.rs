//! `oneloop generate`: the man page and the shell completion scripts, made from the clap
//! definition that `--help` is made from, so that neither can drift from the command line.
//!
//! The completions are clap_complete's, as they come. The man page is clap_mangen's, assembled:
//! `Man::render` writes only the top-level command (its options and a list pointing to
//! `oneloop-serve(1)` and the like, pages that would have to be installed one by one), so the
//! page here is the top-level command's sections, a list of the commands, then one section per
//! command — its synopsis, description and every option — rendered by clap_mangen for that
//! command and nested one level down (`.SH` becomes `.SS`). One page, `man oneloop`, says it all.
//! Characters outside ASCII (the help's dashes) are written as groff's `\[uXXXX]` escapes, which
//! every formatter reads whatever the locale, rather than as raw UTF-8, which troff without a
//! preprocessor takes for Latin-1 and warns about.

use std::io::{self, Write};

use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// `oneloop generate WHAT`
#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// What to print on standard output.
    #[arg(value_enum, value_name = "WHAT")]
    pub what: Artifact,
}

/// What `oneloop generate` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Artifact {
    /// The man page (roff): every command and every option (`man -l -` to read it).
    Man,
    /// The bash completion script.
    CompleteBash,
    /// The zsh completion script (a `_oneloop` file in a directory on `$fpath`).
    CompleteZsh,
    /// The fish completion script.
    CompleteFish,
}

/// Writes `what`, generated from `command` (the whole command line's definition), to `out`.
/// It is rendered whole in memory first: a write error is then the only error there is.
pub(crate) fn write(what: Artifact, command: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    let text = match what {
        Artifact::Man => man_page(command),
        Artifact::CompleteBash => completion(Shell::Bash, command),
        Artifact::CompleteZsh => completion(Shell::Zsh, command),
        Artifact::CompleteFish => completion(Shell::Fish, command),
    };
    out.write_all(&text)?;
    out.flush()
}

/// The completion script for `shell`, for the program's own name.
fn completion(shell: Shell, mut command: clap::Command) -> Vec<u8> {
    let mut text = Vec::new();
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, &mut text);
    text
}

/// The one man page: the top level's title, name, synopsis, description and options, the list
/// of commands, one section per command, and the version. (Commands have no commands of their
/// own; clap's `help` does, one per command, which its own section's synopsis covers.)
fn man_page(mut command: clap::Command) -> Vec<u8> {
    // Built, every subcommand knows its full name (`oneloop serve`) for its synopsis.
    command.build();
    let title = command.get_name().to_uppercase();
    let top = Man::new(command.clone()).title(title);
    let mut page = Page::default();
    page.add(|w| top.render_title(w));
    page.add(|w| top.render_name_section(w));
    page.add(|w| top.render_synopsis_section(w));
    page.add(|w| top.render_description_section(w));
    page.add(|w| top.render_options_section(w));
    page.add(|w| commands_list(&command).to_writer(w));
    command_sections(&command, &mut page);
    page.add(|w| top.render_version_section(w));
    ascii(&page.text).into_bytes()
}

/// `text` with every character outside ASCII written as a groff escape (`—` as `\[u2014]`).
fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    out
}

/// `.SH COMMANDS`: each command's full name and its one-line summary.
fn commands_list(command: &clap::Command) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in visible_subcommands(command) {
        roff.control("TP", []);
        roff.text([bold(full_name(sub))]);
        if let Some(about) = sub.get_about() {
            roff.text([roman(about.to_string())]);
        }
    }
    roff
}

/// One `.SH` per subcommand of `command`, titled with its full name, holding its synopsis, its
/// description and its options (each clap_mangen section one level down, as an `.SS`).
fn command_sections(command: &clap::Command, page: &mut Page) {
    for sub in visible_subcommands(command) {
        let man = Man::new(sub.clone());
        let mut heading = Roff::new();
        heading.control("SH", [full_name(sub).to_uppercase().as_str()]);
        page.add(|w| heading.to_writer(w));
        page.add_nested(|w| man.render_synopsis_section(w));
        page.add_nested(|w| man.render_description_section(w));
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            page.add_nested(|w| man.render_options_section(w));
        }
    }
}

/// The subcommands a user sees (clap's own `help` among them), in `--help`'s order.
fn visible_subcommands(command: &clap::Command) -> Vec<&clap::Command> {
    let mut subs: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .collect();
    subs.sort_by_key(|s| s.get_display_order());
    subs
}

/// `oneloop serve`: the name a user types (clap sets it when the command is built).
fn full_name(command: &clap::Command) -> String {
    command
        .get_bin_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned()
}

/// The page as it is assembled from roff fragments.
#[derive(Default)]
struct Page {
    text: String,
}

/// The two lines every roff fragment starts with (they define `\*(Aq`, the upright apostrophe):
/// needed once, at the top of the page.
const APOSTROPHE_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

impl Page {
    /// Appends a fragment, the first with its preamble, the others without.
    fn add(&mut self, render: impl FnOnce(&mut dyn Write) -> io::Result<()>) {
        let fragment = self.render(render);
        self.text.push_str(&fragment);
    }

    /// Appends a fragment one heading level down: a section (`.SH`) becomes a subsection
    /// (`.SS`), so that a command's SYNOPSIS and OPTIONS sit under that command's section.
    fn add_nested(&mut self, render: impl FnOnce(&mut dyn Write) -> io::Result<()>) {
        let fragment = self.render(render);
        for line in fragment.split_inclusive('\n') {
            // Text lines never start with a period (roff escapes them), so this is a heading.
            match line.strip_prefix(".SH ") {
                Some(heading) => {
                    self.text.push_str(".SS ");
                    self.text.push_str(heading);
                }
                None => self.text.push_str(line),
            }
        }
    }

    /// Renders one fragment, without the preamble unless it is the first.
    fn render(&self, render: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
        let mut buffer = Vec::new();
        render(&mut buffer).expect("writing to a Vec cannot fail");
        let fragment = String::from_utf8(buffer).expect("roff from UTF-8 text is UTF-8");
        match fragment.strip_prefix(APOSTROPHE_PREAMBLE) {
            Some(rest) if !self.text.is_empty() => rest.to_owned(),
            _ => fragment,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small command line: every option of every command is on the page, under its own
    /// command's section, the preamble is there once, and the page is ASCII.
    #[test]
    fn the_page_holds_every_command_and_option_nested_once() {
        let flag = |name: &'static str| {
            clap::Arg::new(name)
                .long(name)
                .action(clap::ArgAction::SetTrue)
        };
        let command = clap::Command::new("tool")
            .version("1.0")
            .about("A tool.")
            .arg(flag("verbose"))
            .subcommand(
                clap::Command::new("run")
                    .about("Runs it — fast.")
                    .arg(flag("fast")),
            )
            .subcommand(
                clap::Command::new("stop")
                    .about("Stops it.")
                    .arg(flag("now")),
            );
        let page = String::from_utf8(man_page(command)).unwrap();
        assert!(page.is_ascii(), "{page}");
        assert!(page.contains("Runs it \\[u2014] fast."), "{page}");
        assert_eq!(page.matches(".ds Aq").count(), 2, "{page}");
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
        for heading in [".SH COMMANDS", ".SH \"TOOL RUN\"", ".SH \"TOOL STOP\""] {
            assert!(
                page.contains(&format!("\n{heading}\n")),
                "{heading}:\n{page}"
            );
        }
        let run = page.split("\n.SH \"TOOL RUN\"\n").nth(1).unwrap();
        let run = run.split("\n.SH ").next().unwrap();
        assert!(
            run.contains(".SS SYNOPSIS") && run.contains(".SS OPTIONS"),
            "{run}"
        );
        assert!(
            run.contains("\\-\\-fast") && !run.contains("\\-\\-now"),
            "{run}"
        );
        assert!(
            page.contains("\\-\\-verbose") && page.contains("\\-\\-now"),
            "{page}"
        );
    }
}
