//! `oneloop generate`: the man page documents every command and every option `--help` shows,
//! and the bash completion is a script bash accepts and that completes a command's name.

use std::process::Command;

fn oneloop(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_oneloop"))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "oneloop {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The long options a command's own `--help` lists.
fn long_options(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let at = line.find("--")?;
            (at == 0 || line.starts_with('-')).then(|| {
                line[at + 2..]
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .next()
                    .unwrap()
                    .to_owned()
            })
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn the_man_page_documents_every_command_and_option() {
    let man = oneloop(&["generate", "man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH"), "not roff");
    for command in ["serve", "client", "load", "send", "generate"] {
        let section = format!(".SH \"ONELOOP {}\"", command.to_uppercase());
        let start = man
            .find(&section)
            .unwrap_or_else(|| panic!("no section for {command}"));
        let rest = &man[start + section.len()..];
        let body = &rest[..rest.find("\n.SH \"ONELOOP ").unwrap_or(rest.len())];
        let options = long_options(&oneloop(&[command, "--help"]));
        assert!(!options.is_empty(), "{command} has options");
        for option in options {
            let roff = format!("\\-\\-{}", option.replace('-', "\\-"));
            assert!(
                body.contains(&roff),
                "{command} --{option} is not in its man page section"
            );
        }
    }
}

#[test]
fn the_bash_completion_completes_a_command() {
    let script = oneloop(&["generate", "complete-bash"]);
    let dir = std::env::temp_dir().join(format!("oneloop-complete-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("oneloop.bash");
    std::fs::write(&path, script).unwrap();
    let check = format!(
        "source {}; f=$(complete -p oneloop | sed -E 's/.*-F ([^ ]+).*/\\1/'); \
         COMP_WORDS=(oneloop ser); COMP_CWORD=1; COMP_LINE='oneloop ser'; COMP_POINT=11; \
         $f oneloop ser oneloop; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let output = Command::new("bash").args(["-c", &check]).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let offered = String::from_utf8_lossy(&output.stdout);
    assert!(
        offered.lines().any(|l| l.trim() == "serve"),
        "completing `oneloop ser` offered {offered:?} ({})",
        String::from_utf8_lossy(&output.stderr)
    );
    for shell in ["complete-zsh", "complete-fish"] {
        assert!(oneloop(&["generate", shell]).contains("oneloop"));
    }
}

#[test]
fn an_unknown_thing_to_generate_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_oneloop"))
        .args(["generate", "bogus"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
