//! `cargo xtask dist [DIR]`: the release binaries with their man pages and
//! shell completions, laid out as they are installed, in `DIR` (default
//! `target/dist`). The pages and completions come from the binaries
//! themselves (`--generate`), so they describe exactly the flags built.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const USAGE: &str = "usage: cargo xtask dist [DIR]";

/// The binaries shipped.
const BINARIES: &[&str] = &["echo-server", "echo-client"];

/// Each generated file: the `--generate` kind, and where it goes under the
/// distribution directory (`{}` is the binary's name).
const GENERATED: &[(&str, &str)] = &[
    ("man", "share/man/man1/{}.1"),
    ("bash", "share/bash-completion/completions/{}"),
    ("zsh", "share/zsh/site-functions/_{}"),
    ("fish", "share/fish/vendor_completions.d/{}.fish"),
];

/// Builds and lays out the distribution; true on success.
pub(crate) fn run(args: &[String]) -> bool {
    let dir = match args {
        [] => integration_tests::workspace_root().join("target").join("dist"),
        [dir] if !dir.starts_with('-') => PathBuf::from(dir),
        _ => {
            eprintln!("{USAGE}");
            return false;
        }
    };
    match build(&dir) {
        Ok(files) => {
            println!("dist: in {}, install under a prefix such as /usr/local:", dir.display());
            for file in files {
                println!("  {}", file.display());
            }
            true
        }
        Err(e) => {
            eprintln!("dist: FAIL: {e}");
            false
        }
    }
}

fn build(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = integration_tests::workspace_root();
    let mut command = Command::new(cargo);
    command.current_dir(root).args(["build", "--release", "--locked"]);
    for binary in BINARIES {
        command.args(["--bin", binary]);
    }
    let status = command.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --release failed: {status}"));
    }
    lay_out(&root.join("target").join("release"), dir)
}

/// Copies the binaries found in `built` under `dir/bin` and writes their
/// generated pages and completions beside; returns the files, relative to
/// `dir`.
fn lay_out(built: &Path, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for binary in BINARIES {
        let built = built.join(binary);
        let installed = Path::new("bin").join(binary);
        copy(&built, &dir.join(&installed))?;
        files.push(installed);
        for (kind, place) in GENERATED {
            let relative = PathBuf::from(place.replace("{}", binary));
            let output = Command::new(&built)
                .args(["--generate", kind])
                .output()
                .map_err(|e| format!("cannot run {}: {e}", built.display()))?;
            if !output.status.success() || output.stdout.is_empty() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                return Err(format!("{binary} --generate {kind}: {}: {stderr}", output.status));
            }
            write(&dir.join(&relative), &output.stdout)?;
            files.push(relative);
        }
    }
    Ok(files)
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    make_parent(to)?;
    fs::copy(from, to).map(drop).map_err(|e| format!("cannot copy to {}: {e}", to.display()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    make_parent(path)?;
    fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn make_parent(path: &Path) -> Result<(), String> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file lands where its tool looks for it, with the right content.
    #[test]
    fn the_layout_has_each_page_and_completion_in_its_place() {
        let server = integration_tests::binary("echo-server").unwrap();
        integration_tests::binary("echo-client").unwrap();
        let built = server.parent().unwrap();
        let dir = std::env::temp_dir().join(format!("forkecho-dist-{}", std::process::id()));
        let files = lay_out(built, &dir).unwrap();
        let read = |path: &str| fs::read_to_string(dir.join(path)).unwrap();
        assert!(read("share/man/man1/echo-server.1").contains(".TH echo-server 1"));
        assert!(read("share/man/man1/echo-client.1").contains(".TH echo-client 1"));
        assert!(read("share/bash-completion/completions/echo-server").contains("--prefork"));
        assert!(read("share/zsh/site-functions/_echo-client").starts_with("#compdef echo-client"));
        assert!(read("share/fish/vendor_completions.d/echo-server.fish").contains("-l prefork"));
        assert!(dir.join("bin/echo-server").is_file() && dir.join("bin/echo-client").is_file());
        assert_eq!(files.len(), 2 * (1 + GENERATED.len()), "{files:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
