//! The manuals: `--help` reads like a man page (every option with its default,
//! examples, signals, exit status), and `--generate` writes a man page that
//! groff accepts and completions each shell can load, all from the same clap
//! definitions.

use std::process::{Command, Stdio};

use integration_tests::binary;

use crate::{installed_or_skip, tool_or_skip};

const BINARIES: [&str; 2] = ["echo-server", "echo-client"];

/// What `BINARY ARGS…` writes to standard output; it must succeed, silently.
fn output_of(binary_name: &str, args: &[&str]) -> String {
    let output = Command::new(binary(binary_name).unwrap()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{binary_name} {args:?}: {}: {stderr}", output.status);
    assert!(stderr.is_empty(), "{binary_name} {args:?} wrote to stderr: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// Every long option `--help` lists, as `--name`.
fn long_options(help: &str) -> Vec<String> {
    let mut options: Vec<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| line.split([',', ' ']).map(str::trim).find(|w| w.starts_with("--")))
        .map(|word| word.trim_end_matches("...").to_owned())
        .collect();
    options.dedup();
    options
}

/// Each option's part of `--help`: its line and everything indented under it.
fn option_blocks(help: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        if (1..=6).contains(&indent) && line.trim_start().starts_with('-') {
            blocks.extend(current.replace(line.to_owned()));
        } else if indent == 0 && !line.is_empty() {
            blocks.extend(current.take());
        } else if let Some(block) = &mut current {
            block.push('\n');
            block.push_str(line);
        }
    }
    blocks.extend(current);
    blocks
}

#[test]
fn help_gives_every_option_a_default_and_ends_with_examples_signals_and_exit_status() {
    for name in BINARIES {
        let help = output_of(name, &["--help"]);
        let options = long_options(&help);
        assert!(options.len() >= 8, "{name}: options not found in --help: {options:?}");
        // Each option that takes a value says what it is when not given.
        for block in option_blocks(&help) {
            let takes_value = block.lines().next().is_some_and(|line| line.contains('<'));
            let settled = ["[default: ", "Off by default", "Default:", "Repeatable", "Without it"]
                .iter()
                .any(|phrase| block.contains(phrase));
            let exempt = ["--generate", "--user", "--group"].iter().any(|o| block.contains(o));
            assert!(
                !takes_value || settled || exempt,
                "{name}: an option without its default:\n{block}"
            );
        }
        let mut sections = vec!["Examples:", "Exit status:", "See also:"];
        if name == "echo-server" {
            sections.extend(["Signals:", "Environment:"]);
        }
        for section in sections {
            assert!(help.contains(section), "{name} --help has no {section}\n{help}");
        }
        assert!(help.contains(&format!("$ {name} ")), "{name} --help shows no example command");
    }
}

#[test]
fn the_man_page_is_valid_roff_and_documents_every_option() {
    for name in BINARIES {
        let page = output_of(name, &["--generate", "man"]);
        assert!(page.contains(&format!(".TH {name} 1")), "{name}: no title line\n{page}");
        for section in
            ["NAME", "SYNOPSIS", "OPTIONS", "EXAMPLES", "\"EXIT STATUS\"", "\"SEE ALSO\""]
        {
            assert!(page.contains(&format!(".SH {section}")), "{name}: no {section}\n{page}");
        }
        let help = output_of(name, &["--help"]);
        for option in long_options(&help) {
            let in_roff = option.replace('-', "\\-");
            assert!(page.contains(&in_roff), "{name}: the man page lacks {option}");
        }
        // The hand-written sections appear once, not again as clap's epilogue.
        assert_eq!(page.matches(".SH EXAMPLES").count(), 1, "{name}");
        assert!(!page.contains("Examples:"), "{name}: the --help epilogue leaked into the page");
        if installed_or_skip("groff") {
            let mut groff = Command::new("groff")
                .args(["-man", "-ww", "-z"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut groff.stdin.take().unwrap(), page.as_bytes()).unwrap();
            let checked = groff.wait_with_output().unwrap();
            let warnings = String::from_utf8_lossy(&checked.stderr);
            assert!(checked.status.success() && warnings.is_empty(), "{name}: groff: {warnings}");
        }
    }
}

/// Runs `shell ARGS… FILE` on a completion script written to a file; it must
/// succeed silently.
fn shell_accepts(shell: &str, args: &[&str], script: &str) {
    let dir = std::env::temp_dir().join(format!("forkecho-completion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{shell}-{}", script.len()));
    std::fs::write(&file, script).unwrap();
    let output = Command::new(shell).args(args).arg(&file).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.is_empty(), "{shell} {args:?}: {stderr}\n{script}");
}

#[test]
fn completions_load_in_bash_zsh_and_fish_and_name_the_options() {
    for name in BINARIES {
        let help = output_of(name, &["--help"]);
        let options = long_options(&help);
        for (shell, check) in [("bash", ["-n"]), ("zsh", ["-n"]), ("fish", ["--no-execute"])] {
            let script = output_of(name, &["--generate", shell]);
            for option in &options {
                // fish spells long options without their dashes (`-l name`).
                let bare = option.trim_start_matches('-');
                assert!(script.contains(bare), "{name}: {shell} completions lack {option}");
            }
            let runs = if shell == "bash" { true } else { tool_or_skip(shell) };
            if runs {
                shell_accepts(shell, &check, &script);
            }
        }
    }
}

#[test]
fn generate_stands_alone() {
    // The client's HOST and PORT are not needed to write its manual.
    assert!(output_of("echo-client", &["--generate", "man"]).contains(".TH echo-client"));
    let output = Command::new(binary("echo-server").unwrap())
        .args(["--generate", "man", "7000"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let output = Command::new(binary("echo-server").unwrap())
        .args(["--generate", "troff"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("possible values: man, bash, zsh, fish")
    );
}
