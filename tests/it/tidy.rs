//! Tidy checks: the invariants of docs/ARCHITECTURE.md that a machine can
//! check, as rust-analyzer keeps them. One `#[test]` per rule; a broken rule
//! panics with `tidy rule '<name>' broken:` and every offending `file:line`,
//! relative to the workspace root.
//!
//! The rules:
//! - `dependency-direction`: which workspace packages each package may depend
//!   on (the table below), and that only the binaries use clap and
//!   tracing-subscriber;
//! - `unsafe-only-in-procmgr`: no `unsafe` code outside crates/procmgr (tests/
//!   aside), and the other crates' roots declare `#![forbid(unsafe_code)]`;
//! - `libraries-never-print`: library code never prints, installs a
//!   subscriber or exits the process;
//! - `safety-comment-on-unsafe-block`: every `unsafe {` block has a
//!   `// SAFETY:` comment on its line or right above its statement.
//!
//! Each checker takes the workspace root as a parameter, so the `*_bites`
//! tests at the end run it on a small synthetic tree (or a hand-made package
//! list) that breaks the rule, and prove that it reports the offence.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------
// The rules, as data. Adding a crate means adding it here.
// ---------------------------------------------------------------------------

/// Every workspace package, with the workspace packages it may depend on
/// through normal dependencies (dev and build dependencies are not checked).
/// A workspace member missing from this table is itself an offence.
///
/// Cycles are impossible by construction: the table is layered (the base
/// libraries, then forkserve, then the binaries, then tests and xtask).
const ALLOWED_WORKSPACE_DEPS: &[(&str, &[&str])] = &[
    // The three base libraries never depend on one another.
    ("netcore", &[]),
    ("procmgr", &[]),
    ("echo-proto", &[]),
    // The server layer composes sockets and processes; it knows no protocol.
    ("forkserve", &["netcore", "procmgr"]),
    // The server reaches process management only through forkserve.
    ("server", &["forkserve", "netcore", "echo-proto", "manual"]),
    ("client", &["netcore", "echo-proto", "manual"]),
    // The binaries' manuals (help text, man page, completions): clap only.
    ("manual", &[]),
    // Tests and xtask drive the built binaries as processes.
    ("integration-tests", &[]),
    ("xtask", &["integration-tests"]),
];

/// External crates that only the binaries may have as normal dependencies.
const BINARY_ONLY_DEPS: &[&str] = &["clap", "tracing-subscriber"];

/// The packages that are binaries, and `manual`, which only they use (the only
/// ones allowed [`BINARY_ONLY_DEPS`]).
const BINARIES: &[&str] = &["server", "client", "manual"];

/// The one directory whose code may contain `unsafe`.
const UNSAFE_HOME: &str = "crates/procmgr";

/// The directories scanned for `unsafe` code by `unsafe-only-in-procmgr`
/// (tests/ may use `unsafe`, with SAFETY comments, to set up scenarios).
const NO_UNSAFE_DIRS: &[&str] = &["crates", "xtask"];

/// Crate roots that must declare `#![forbid(unsafe_code)]`.
const FORBID_UNSAFE_ROOTS: &[&str] = &[
    "crates/netcore/src/lib.rs",
    "crates/echo-proto/src/lib.rs",
    "crates/forkserve/src/lib.rs",
    "crates/manual/src/lib.rs",
    "crates/client/src/main.rs",
    "crates/server/src/main.rs",
];

/// The libraries whose `src/` must never print, install a subscriber or exit.
const LIBRARIES: &[&str] = &["netcore", "procmgr", "echo-proto", "forkserve", "manual"];

/// What library code must not contain (matched on whole tokens, outside
/// comments and string literals).
const LIBRARY_FORBIDDEN: &[&str] = &[
    "println!",
    "print!",
    "eprintln!",
    "eprint!",
    "dbg!",
    "tracing_subscriber",
    "set_global_default",
    "fmt().init",
    "process::exit",
    "libc::exit",
    "process::abort",
    "stderr()",
];

/// The directories whose `.rs` files must comment every `unsafe` block.
const SAFETY_COMMENT_DIRS: &[&str] = &["crates", "tests", "xtask"];

// ---------------------------------------------------------------------------
// The tests on the real workspace.
// ---------------------------------------------------------------------------

/// Normal dependencies follow the table, and only binaries use clap and
/// tracing-subscriber.
#[test]
fn dependency_direction() {
    let root = integration_tests::workspace_root();
    enforce("dependency-direction", &check_dependencies(&workspace_packages(root)));
}

/// `unsafe` code lives only in procmgr, and the other crates forbid it.
#[test]
fn unsafe_only_in_procmgr() {
    enforce(
        "unsafe-only-in-procmgr",
        &check_unsafe_only_in_procmgr(integration_tests::workspace_root()),
    );
}

/// Library code never prints, installs a subscriber or exits.
#[test]
fn libraries_never_print() {
    enforce(
        "libraries-never-print",
        &check_libraries_never_print(integration_tests::workspace_root()),
    );
}

/// Every `unsafe` block says why it is sound.
#[test]
fn safety_comment_on_unsafe_block() {
    enforce(
        "safety-comment-on-unsafe-block",
        &check_safety_comments(integration_tests::workspace_root()),
    );
}

/// Panics with the rule's name and every offence, if there are any.
fn enforce(rule: &str, offences: &[Offence]) {
    if !offences.is_empty() {
        let list: Vec<String> = offences.iter().map(|o| format!("  {o}")).collect();
        panic!("tidy rule '{rule}' broken:\n{}", list.join("\n"));
    }
}

/// One breach of a rule: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Offence {
    /// The file, relative to the workspace root, with `/` separators.
    file: String,
    /// The 1-based line, when the offence is on one.
    line: Option<usize>,
    /// What is wrong there.
    message: String,
}

impl Offence {
    /// An offence at `line` of `file`.
    fn at(file: &str, line: Option<usize>, message: String) -> Self {
        Self { file: file.to_owned(), line, message }
    }

    /// Where it is, as `file:line` or `file`.
    fn place(&self) -> String {
        match self.line {
            Some(line) => format!("{}:{line}", self.file),
            None => self.file.clone(),
        }
    }
}

impl fmt::Display for Offence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place(), self.message)
    }
}

// ---------------------------------------------------------------------------
// Rule 1: dependency-direction.
// ---------------------------------------------------------------------------

/// A workspace package, as far as the dependency rule cares.
#[derive(Debug, Clone)]
struct Package {
    /// The package name (`server`, not the binary's `echo-server`).
    name: String,
    /// Its manifest, relative to the workspace root.
    manifest: String,
    /// Its declared dependencies.
    deps: Vec<Dep>,
}

/// One declared dependency of a [`Package`].
#[derive(Debug, Clone)]
struct Dep {
    /// The depended-on package's real name (even if renamed in the manifest).
    name: String,
    /// Which section declares it.
    kind: DepKind,
    /// Its line in the manifest, when it can be found.
    line: Option<usize>,
}

/// The dependency sections of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DepKind {
    /// `[dependencies]`: linked into the package itself.
    Normal,
    /// `[dev-dependencies]`: tests, examples and benches only.
    Dev,
    /// `[build-dependencies]`: the build script only.
    Build,
}

/// The dependency rule over a package list; pure, so it can be tested on a
/// hand-made list.
fn check_dependencies(packages: &[Package]) -> Vec<Offence> {
    let members: BTreeSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let mut offences = Vec::new();
    for package in packages {
        let name = package.name.as_str();
        let allowed = ALLOWED_WORKSPACE_DEPS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
        if allowed.is_none() {
            let message = format!(
                "workspace package `{name}` is not in ALLOWED_WORKSPACE_DEPS (tests/it/tidy.rs): \
                 add it with the workspace packages it may depend on"
            );
            offences.push(Offence::at(&package.manifest, None, message));
        }
        for dep in package.deps.iter().filter(|d| d.kind == DepKind::Normal) {
            let target = dep.name.as_str();
            if let Some(allowed) = allowed {
                if members.contains(target) && !allowed.contains(&target) {
                    let message = format!(
                        "`{name}` must not depend on `{target}` (it may depend on: {})",
                        if allowed.is_empty() {
                            "no workspace package".into()
                        } else {
                            allowed.join(", ")
                        }
                    );
                    offences.push(Offence::at(&package.manifest, dep.line, message));
                }
            }
            if BINARY_ONLY_DEPS.contains(&target) && !BINARIES.contains(&name) {
                let message = format!(
                    "`{name}` must not depend on `{target}`: only the binaries ({}) may",
                    BINARIES.join(", ")
                );
                offences.push(Offence::at(&package.manifest, dep.line, message));
            }
        }
    }
    for (name, _) in ALLOWED_WORKSPACE_DEPS {
        if !members.contains(name) {
            let message = format!("ALLOWED_WORKSPACE_DEPS lists `{name}`, not a workspace member");
            offences.push(Offence::at("tests/it/tidy.rs", None, message));
        }
    }
    offences
}

/// The workspace's packages, from `cargo metadata`.
///
/// `--no-deps` lists just the workspace members with their declared
/// dependencies, which is what the rule is about, without resolving (or
/// downloading) the whole graph.
fn workspace_packages(root: &Path) -> Vec<Package> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo metadata: {e}"));
    assert!(
        output.status.success(),
        "cargo metadata failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    parse_metadata(&metadata, root)
}

/// The workspace members in `cargo metadata` output, with the line of each
/// dependency looked up in its manifest under `root`.
fn parse_metadata(metadata: &serde_json::Value, root: &Path) -> Vec<Package> {
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    let mut packages = Vec::new();
    for package in metadata["packages"].as_array().unwrap() {
        if !members.contains(package["id"].as_str().unwrap()) {
            continue;
        }
        let manifest_path = Path::new(package["manifest_path"].as_str().unwrap());
        let manifest_text = fs::read_to_string(manifest_path).unwrap_or_default();
        let deps = package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|dep| {
                let name = dep["name"].as_str().unwrap().to_owned();
                let kind = match dep["kind"].as_str() {
                    None => DepKind::Normal,
                    Some("dev") => DepKind::Dev,
                    Some("build") => DepKind::Build,
                    Some(other) => panic!("unknown dependency kind {other:?}"),
                };
                // A renamed dependency is keyed by its new name in the manifest.
                let key = dep["rename"].as_str().unwrap_or(&name);
                let line = dependency_line(&manifest_text, key, kind);
                Dep { name, kind, line }
            })
            .collect();
        packages.push(Package {
            name: package["name"].as_str().unwrap().to_owned(),
            manifest: relative(root, manifest_path),
            deps,
        });
    }
    packages
}

/// The 1-based line declaring dependency `key` in a `kind` section of a
/// manifest: `key = …` or `key.workspace = true` in `[dependencies]` (or a
/// `[target.….dependencies]`), or a `[dependencies.key]` header.
fn dependency_line(manifest: &str, key: &str, kind: DepKind) -> Option<usize> {
    let section = match kind {
        DepKind::Normal => "dependencies",
        DepKind::Dev => "dev-dependencies",
        DepKind::Build => "build-dependencies",
    };
    let is_section = |header: &str| header == section || header.ends_with(&format!(".{section}"));
    let mut in_section = false;
    for (index, line) in manifest.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let header = header.trim();
            if let Some(table) = header.strip_suffix(key).and_then(|h| h.strip_suffix('.')) {
                if is_section(table) {
                    return Some(index + 1);
                }
            }
            in_section = is_section(header);
        } else if in_section {
            let rest = line.strip_prefix(key).unwrap_or("");
            if rest.trim_start().starts_with(['=', '.']) {
                return Some(index + 1);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Rule 2: unsafe-only-in-procmgr.
// ---------------------------------------------------------------------------

/// `unsafe` code outside procmgr (and outside tests/), and crate roots
/// without `#![forbid(unsafe_code)]`.
fn check_unsafe_only_in_procmgr(root: &Path) -> Vec<Offence> {
    let mut offences = Vec::new();
    for dir in NO_UNSAFE_DIRS {
        for path in rust_files(&root.join(dir)) {
            let file = relative(root, &path);
            if file == UNSAFE_HOME || file.starts_with(&format!("{UNSAFE_HOME}/")) {
                continue;
            }
            for (index, line) in lex(&read(&path)).iter().enumerate() {
                for usage in unsafe_usages(&line.code) {
                    let message = format!("`{usage}` outside {UNSAFE_HOME}");
                    offences.push(Offence::at(&file, Some(index + 1), message));
                }
            }
        }
    }
    for file in FORBID_UNSAFE_ROOTS {
        let path = root.join(file);
        let forbids = path.is_file() && lex(&read(&path)).iter().any(|l| forbids_unsafe(&l.code));
        if !forbids {
            let message = "lacks `#![forbid(unsafe_code)]`".to_owned();
            offences.push(Offence::at(file, None, message));
        }
    }
    offences
}

/// The kinds of `unsafe` code on one line of code (comments and literals
/// already blanked): `unsafe {`, `unsafe fn`, `unsafe impl`, `unsafe extern`,
/// `unsafe trait` and the edition-2024 `unsafe(...)` attributes.
/// `forbid(unsafe_code)` is not one: `unsafe_code` is another word.
fn unsafe_usages(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for start in token_positions(code, "unsafe") {
        let rest = code[start + "unsafe".len()..].trim_start();
        if rest.starts_with('{') {
            found.push("unsafe {".to_owned());
        } else if rest.starts_with('(') {
            found.push("unsafe(".to_owned());
        } else if let Some(word) = ["fn", "impl", "extern", "trait"]
            .into_iter()
            .find(|w| token_positions(rest, w).first() == Some(&0))
        {
            found.push(format!("unsafe {word}"));
        }
    }
    found
}

/// Whether a line of code is a `#![forbid(...)]` naming `unsafe_code`.
fn forbids_unsafe(code: &str) -> bool {
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    compact.starts_with("#![forbid(") && !token_positions(&compact, "unsafe_code").is_empty()
}

// ---------------------------------------------------------------------------
// Rule 3: libraries-never-print.
// ---------------------------------------------------------------------------

/// Printing, subscriber set-up and process exits in the libraries' `src/`,
/// except in `tests.rs` files and `tests/` or `examples/` directories.
fn check_libraries_never_print(root: &Path) -> Vec<Offence> {
    let mut offences = Vec::new();
    for library in LIBRARIES {
        let src = root.join("crates").join(library).join("src");
        for path in rust_files(&src) {
            let inside = path.strip_prefix(&src).unwrap_or(&path);
            let exempt = inside.file_name().is_some_and(|n| n == "tests.rs")
                || inside.parent().is_some_and(|dir| {
                    dir.components()
                        .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "examples")
                });
            if exempt {
                continue;
            }
            let file = relative(root, &path);
            for (index, line) in lex(&read(&path)).iter().enumerate() {
                for needle in LIBRARY_FORBIDDEN {
                    if !token_positions(&line.code, needle).is_empty() {
                        let message = format!("`{needle}` in library code");
                        offences.push(Offence::at(&file, Some(index + 1), message));
                    }
                }
            }
        }
    }
    offences
}

// ---------------------------------------------------------------------------
// Rule 4: safety-comment-on-unsafe-block.
// ---------------------------------------------------------------------------

/// `unsafe {` blocks in crates/, tests/ and xtask/ without a `// SAFETY:`
/// comment on their line, on a line of their statement, or in the comment
/// block right above their statement.
fn check_safety_comments(root: &Path) -> Vec<Offence> {
    let mut offences = Vec::new();
    for dir in SAFETY_COMMENT_DIRS {
        for path in rust_files(&root.join(dir)) {
            let file = relative(root, &path);
            let lines = lex(&read(&path));
            for (index, line) in lines.iter().enumerate() {
                let has_block = unsafe_usages(&line.code).iter().any(|u| u == "unsafe {");
                if has_block && !has_safety_comment(&lines, index) {
                    let message = "`unsafe {` block without a `// SAFETY:` comment".to_owned();
                    offences.push(Offence::at(&file, Some(index + 1), message));
                }
            }
        }
    }
    offences
}

/// Whether the `unsafe` block on `lines[index]` is explained: a `// SAFETY:`
/// comment on any line of its statement, or in the contiguous comment lines
/// directly above the statement's first line.
///
/// The statement starts after the nearest line above that is blank, only a
/// comment, or ends in `;`, `{` or `}`; the lines in between are its
/// continuation lines (`let old =` above `unsafe { … }`, an attribute).
fn has_safety_comment(lines: &[Line], index: usize) -> bool {
    let mut start = index;
    while start > 0 {
        let code = lines[start - 1].code.trim_end();
        if code.trim().is_empty() || code.ends_with([';', '{', '}']) {
            break;
        }
        start -= 1;
    }
    if lines[start..=index].iter().any(|l| is_safety_comment(&l.comment)) {
        return true;
    }
    lines[..start]
        .iter()
        .rev()
        .take_while(|l| l.code.trim().is_empty() && !l.comment.trim().is_empty())
        .any(|l| is_safety_comment(&l.comment))
}

/// Whether a line's comment is a `// SAFETY:` comment (not a doc comment).
fn is_safety_comment(comment: &str) -> bool {
    comment.trim_start().strip_prefix("//").is_some_and(|rest| {
        !rest.starts_with(['/', '!']) && rest.trim_start().starts_with("SAFETY:")
    })
}

// ---------------------------------------------------------------------------
// Shared scanning: files, a small lexer, token search.
// ---------------------------------------------------------------------------

/// Every `.rs` file under `dir`, sorted, skipping `target/` and hidden
/// directories; none if `dir` does not exist.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type().unwrap().is_dir() {
                if name != "target" && !name.starts_with('.') {
                    pending.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A file's text; panics with its path if it cannot be read.
fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `path` relative to `root`, with `/` separators.
fn relative(root: &Path, path: &Path) -> String {
    let inside = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<_> = inside.components().map(|c| c.as_os_str().to_string_lossy()).collect();
    parts.join("/")
}

/// One source line, split by [`lex`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Line {
    /// The code, with comments removed and the insides of string and
    /// character literals replaced by spaces (the quotes stay).
    code: String,
    /// The comments on the line, markers included (`// SAFETY: …`).
    comment: String,
}

/// Where [`lex`] is in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Ordinary code.
    Code,
    /// After `//`, until the end of the line.
    LineComment,
    /// Inside `/* … */`, nested this deep.
    BlockComment(usize),
    /// Inside `"…"` (also `b"…"` and `c"…"`).
    Str,
    /// Inside `r#"…"#` with this many `#`.
    RawStr(usize),
}

/// Splits Rust source into lines of code and comments, so that a rule never
/// matches inside a comment or a string literal, even one spanning lines.
/// Character literals are blanked too (so `'"'` opens no string); lifetimes
/// are left alone.
fn lex(source: &str) -> Vec<Line> {
    let chars: Vec<char> = source.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut lines = Vec::new();
    let mut line = Line::default();
    let mut state = State::Code;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            lines.push(std::mem::take(&mut line));
            if state == State::LineComment {
                state = State::Code;
            }
            i += 1;
            continue;
        }
        match state {
            State::Code => {
                if c == '/' && at(i + 1) == '/' {
                    state = State::LineComment;
                    line.comment.push_str("//");
                    i += 2;
                } else if c == '/' && at(i + 1) == '*' {
                    state = State::BlockComment(1);
                    line.comment.push_str("/*");
                    line.code.push(' ');
                    i += 2;
                } else if c == '"' {
                    state = State::Str;
                    line.code.push('"');
                    i += 1;
                } else if c == 'r' && raw_prefix_starts(&chars, i) {
                    let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
                    if at(i + 1 + hashes) == '"' {
                        state = State::RawStr(hashes);
                        line.code.push_str("r\"");
                        i += 2 + hashes;
                    } else {
                        line.code.push(c);
                        i += 1;
                    }
                } else if c == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
                    // A character literal: skip to its closing quote (past the
                    // escaped character, which may itself be a quote).
                    let first = if at(i + 1) == '\\' { i + 3 } else { i + 2 };
                    let close = (first..chars.len().min(i + 12)).find(|&j| chars[j] == '\'');
                    let end = close.unwrap_or(i);
                    line.code.push_str("' '");
                    i = end + 1;
                } else {
                    line.code.push(c);
                    i += 1;
                }
            }
            State::LineComment => {
                line.comment.push(c);
                i += 1;
            }
            State::BlockComment(depth) => {
                if c == '/' && at(i + 1) == '*' {
                    state = State::BlockComment(depth + 1);
                    line.comment.push_str("/*");
                    i += 2;
                } else if c == '*' && at(i + 1) == '/' {
                    state = if depth == 1 { State::Code } else { State::BlockComment(depth - 1) };
                    line.comment.push_str("*/");
                    i += 2;
                } else {
                    line.comment.push(c);
                    i += 1;
                }
            }
            State::Str => {
                if c == '\\' && at(i + 1) != '\n' {
                    line.code.push_str("  ");
                    i += 2;
                } else if c == '"' {
                    state = State::Code;
                    line.code.push('"');
                    i += 1;
                } else {
                    line.code.push(' ');
                    i += 1;
                }
            }
            State::RawStr(hashes) => {
                if c == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    state = State::Code;
                    line.code.push('"');
                    i += 1 + hashes;
                } else {
                    line.code.push(' ');
                    i += 1;
                }
            }
        }
    }
    if !line.code.is_empty() || !line.comment.is_empty() || source.is_empty() {
        lines.push(line);
    }
    lines
}

/// Whether the `r` at `chars[i]` begins a raw string's prefix (`r"`, `r#"`,
/// `br"`, `cr"`) rather than ending an identifier such as `for` or `bar`.
fn raw_prefix_starts(chars: &[char], i: usize) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let before = |k: usize| if i >= k { Some(chars[i - k]) } else { None };
    match before(1) {
        None => true,
        Some(c) if !is_ident(c) => true,
        Some('b' | 'c') => before(2).is_none_or(|c| !is_ident(c)),
        Some(_) => false,
    }
}

/// The byte offsets of `needle` in `code` as a whole token: not preceded by an
/// identifier character if it starts with one, nor followed by one if it ends
/// with one (so `print!` is not found in `eprint!`, nor `unsafe` in
/// `unsafe_code`).
fn token_positions(code: &str, needle: &str) -> Vec<usize> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let starts_ident = needle.chars().next().is_some_and(is_ident);
    let ends_ident = needle.chars().last().is_some_and(is_ident);
    code.match_indices(needle)
        .map(|(start, _)| start)
        .filter(|&start| {
            let glued_before =
                starts_ident && code[..start].chars().next_back().is_some_and(is_ident);
            let glued_after =
                ends_ident && code[start + needle.len()..].chars().next().is_some_and(is_ident);
            !glued_before && !glued_after
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Proof that each rule bites: the checkers on synthetic trees and packages.
// ---------------------------------------------------------------------------

/// A directory tree under the system's temporary directory, unique to this
/// process and call, removed on drop.
struct TempTree {
    /// Its root.
    root: PathBuf,
}

impl TempTree {
    /// An empty tree whose name contains `name`.
    fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = format!("tidy-{name}-{}-{unique}", std::process::id());
        let root = std::env::temp_dir().join(dir);
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        Self { root }
    }

    /// Writes `text` to `file` (relative), creating its directories.
    fn write(&self, file: &str, text: &str) -> &Self {
        let path = self.root.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        self
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        // Best effort: a leftover directory in /tmp harms nothing.
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The places (`file:line`) of some offences, sorted, for comparison.
fn places(offences: &[Offence]) -> Vec<String> {
    let mut places: Vec<String> = offences.iter().map(Offence::place).collect();
    places.sort();
    places
}

/// A hand-made package with normal dependencies on `deps` (at lines 10, 11, …).
fn package(name: &str, deps: &[&str]) -> Package {
    Package {
        name: name.to_owned(),
        manifest: format!("crates/{name}/Cargo.toml"),
        deps: deps
            .iter()
            .zip(10..)
            .map(|(dep, line)| Dep {
                name: (*dep).to_owned(),
                kind: DepKind::Normal,
                line: Some(line),
            })
            .collect(),
    }
}

/// The intended graph passes; forbidden edges, a library with clap and an
/// unknown member are each reported; dev-dependencies are not checked.
#[test]
fn dependency_direction_bites() {
    let intended = vec![
        package("netcore", &["libc", "socket2", "thiserror", "tracing"]),
        package("procmgr", &["nix", "thiserror", "tracing"]),
        package("echo-proto", &["thiserror", "tracing"]),
        package("forkserve", &["netcore", "procmgr", "thiserror", "tracing"]),
        package("server", &["clap", "echo-proto", "forkserve", "netcore", "tracing-subscriber"]),
        package("client", &["clap", "echo-proto", "netcore", "tracing", "tracing-subscriber"]),
        package("integration-tests", &["nix", "socket2"]),
        package("manual", &["clap", "clap_complete", "clap_mangen"]),
        package("xtask", &["integration-tests"]),
    ];
    assert_eq!(check_dependencies(&intended), vec![]);

    let mut broken = intended.clone();
    let with_dev = |mut p: Package, dev: &str| {
        p.deps.push(Dep { name: dev.to_owned(), kind: DepKind::Dev, line: Some(99) });
        p
    };
    // Allowed: dev-dependencies on anything, for examples and tests.
    broken[3] = with_dev(broken[3].clone(), "tracing-subscriber");
    broken[6] = with_dev(broken[6].clone(), "netcore");
    assert_eq!(check_dependencies(&broken), vec![]);
    // Forbidden: the server reaching procmgr directly, one base library on
    // another, forkserve knowing the protocol, a library with clap, the tests
    // on a library, and a member the table does not know.
    broken[4] = package("server", &["forkserve", "procmgr"]);
    broken[0] = package("netcore", &["socket2", "procmgr"]);
    broken[3] = package("forkserve", &["netcore", "procmgr", "echo-proto"]);
    broken[2] = package("echo-proto", &["tracing", "clap"]);
    broken[6] = package("integration-tests", &["netcore"]);
    broken.push(package("newcrate", &[]));
    let offences = check_dependencies(&broken);
    assert_eq!(
        places(&offences),
        [
            "crates/echo-proto/Cargo.toml:11",
            "crates/forkserve/Cargo.toml:12",
            "crates/integration-tests/Cargo.toml:10",
            "crates/netcore/Cargo.toml:11",
            "crates/newcrate/Cargo.toml",
            "crates/server/Cargo.toml:11",
        ],
        "{offences:#?}"
    );
    let server = offences.iter().find(|o| o.file == "crates/server/Cargo.toml").unwrap();
    assert!(server.message.contains("`server` must not depend on `procmgr`"), "{server}");

    // A table entry that is no longer a member is stale.
    let offences = check_dependencies(&intended[1..]);
    assert_eq!(places(&offences), ["tests/it/tidy.rs"], "{offences:#?}");
}

/// Dependency lines are found in each kind of section and header form.
#[test]
fn dependency_lines_are_found() {
    let manifest = "[package]\nname = \"x\"\n\n[dependencies]\nnetcore.workspace = true\n\
                    procmgr = { path = \"p\" }\n\n[dev-dependencies]\nprocmgr.workspace = true\n\
                    [target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n[dependencies.clap]\n";
    assert_eq!(dependency_line(manifest, "netcore", DepKind::Normal), Some(5));
    assert_eq!(dependency_line(manifest, "procmgr", DepKind::Normal), Some(6));
    assert_eq!(dependency_line(manifest, "procmgr", DepKind::Dev), Some(9));
    assert_eq!(dependency_line(manifest, "libc", DepKind::Normal), Some(11));
    assert_eq!(dependency_line(manifest, "clap", DepKind::Normal), Some(12));
    assert_eq!(dependency_line(manifest, "proc", DepKind::Normal), None);
}

/// `cargo metadata` output is read into packages: members only, each
/// dependency with its kind, its real name and its manifest line.
#[test]
fn metadata_is_parsed() {
    let tree = TempTree::new("metadata");
    tree.write("a/Cargo.toml", "[dependencies]\nnet = { package = \"netcore\" }\n");
    let manifest = tree.root.join("a/Cargo.toml");
    let metadata = serde_json::json!({
        "workspace_members": ["a-id"],
        "packages": [
            {
                "id": "a-id", "name": "a", "manifest_path": manifest.to_str().unwrap(),
                "dependencies": [
                    {"name": "netcore", "kind": null, "rename": "net"},
                    {"name": "clap", "kind": "dev", "rename": null},
                ],
            },
            {"id": "other", "name": "other", "manifest_path": "/x", "dependencies": []},
        ],
    });
    let packages = parse_metadata(&metadata, &tree.root);
    assert_eq!(packages.len(), 1);
    let a = &packages[0];
    assert_eq!((a.name.as_str(), a.manifest.as_str()), ("a", "a/Cargo.toml"));
    let deps: Vec<_> = a.deps.iter().map(|d| (d.name.as_str(), d.kind, d.line)).collect();
    assert_eq!(deps, [("netcore", DepKind::Normal, Some(2)), ("clap", DepKind::Dev, None)]);
}

/// Unsafe code outside procmgr is reported wherever it hides, missing
/// `forbid` attributes too; comments, strings, procmgr and tests/ are not.
#[test]
fn unsafe_only_in_procmgr_bites() {
    let forbid = "#![forbid(unsafe_code)]\n";
    let tree = TempTree::new("unsafe");
    tree.write(
        "crates/netcore/src/lib.rs",
        &format!(
            "{forbid}// unsafe {{ in a comment }}\nconst S: &str = \"unsafe {{ in a string }}\";\n\
             pub fn f() {{\n    unsafe {{ g() }}\n}}\n"
        ),
    )
    .write("crates/netcore/src/listener.rs", "/* unsafe fn\n   in a block comment */\nfn ok() {}\n")
    .write("crates/netcore/target/debug/build/out.rs", "unsafe fn skipped() {}\n")
    .write("crates/echo-proto/src/lib.rs", "//! #![forbid(unsafe_code)] only in a doc comment\n")
    .write("crates/forkserve/src/lib.rs", &format!("{forbid}unsafe impl Send for X {{}}\n"))
    .write("crates/forkserve/examples/demo.rs", "pub unsafe fn demo() {}\n")
    .write("crates/client/src/main.rs", &format!("{forbid}#[unsafe(no_mangle)]\nfn f() {{}}\n"))
    .write("crates/server/src/main.rs", "#![forbid(missing_docs, unsafe_code)]\n")
    .write("crates/manual/src/lib.rs", forbid)
    .write("crates/procmgr/src/fork.rs", "pub unsafe fn fork() {\n    unsafe { f() }\n}\n")
    .write("xtask/src/main.rs", "unsafe extern \"C\" {\n    fn f();\n}\n")
    .write("tests/it/main.rs", "// SAFETY: tests may.\nunsafe { f() };\n");
    let offences = check_unsafe_only_in_procmgr(&tree.root);
    assert_eq!(
        places(&offences),
        [
            "crates/client/src/main.rs:2",
            "crates/echo-proto/src/lib.rs",
            "crates/forkserve/examples/demo.rs:1",
            "crates/forkserve/src/lib.rs:2",
            "crates/netcore/src/lib.rs:5",
            "xtask/src/main.rs:1",
        ],
        "{offences:#?}"
    );
    let missing = offences.iter().find(|o| o.line.is_none()).unwrap();
    assert!(missing.message.contains("#![forbid(unsafe_code)]"), "{missing}");
}

/// Printing, subscribers and exits in library code are reported; doc
/// comments, strings, tests.rs files, tests/ and examples/ directories and
/// the binaries are not.
#[test]
fn libraries_never_print_bites() {
    let tree = TempTree::new("print");
    tree.write(
        "crates/netcore/src/lib.rs",
        "/// ```\n/// println!(\"docs may print\");\n/// ```\npub fn f() {\n    \
         println!(\"x\");\n    let _ = \"print!(in a string)\";\n    my_print!(ok);\n    \
         // dbg!(commented out)\n}\n#[cfg(test)]\nmod tests;\n",
    )
    .write("crates/netcore/src/tests.rs", "fn t() { eprintln!(\"tests may\"); }\n")
    .write("crates/netcore/src/listener/tests/helper.rs", "fn h() { dbg!(1); }\n")
    .write("crates/procmgr/src/fork.rs", "fn f() {\n    std::process::exit(1);\n}\n")
    .write("crates/procmgr/src/signal.rs", "fn g() { unsafe { libc::exit(2) } }\n")
    .write("crates/procmgr/src/exit.rs", "fn ok() { unsafe { libc::_exit(0) } }\n")
    .write("crates/echo-proto/src/deep/inner.rs", "fn f() { eprint!(\"e\"); dbg!(2); }\n")
    .write(
        "crates/forkserve/src/lib.rs",
        "use tracing_subscriber as ts;\nfn f() { ts::fmt().init(); }\n\
         fn g() { tracing::subscriber::set_global_default(s); }\n",
    )
    .write("crates/forkserve/examples/demo.rs", "fn main() { println!(\"examples may\"); }\n")
    .write("crates/client/src/main.rs", "fn main() { println!(\"binaries may\"); }\n");
    let offences = check_libraries_never_print(&tree.root);
    assert_eq!(
        places(&offences),
        [
            "crates/echo-proto/src/deep/inner.rs:1",
            "crates/echo-proto/src/deep/inner.rs:1",
            "crates/forkserve/src/lib.rs:1",
            "crates/forkserve/src/lib.rs:2",
            "crates/forkserve/src/lib.rs:3",
            "crates/netcore/src/lib.rs:5",
            "crates/procmgr/src/fork.rs:2",
            "crates/procmgr/src/signal.rs:1",
        ],
        "{offences:#?}"
    );
}

/// The shapes procmgr uses pass; a block with no comment, a non-SAFETY
/// comment, a SAFETY comment cut off by a blank line or belonging to the
/// statement before, and a doc comment are each reported, in every scanned
/// directory.
#[test]
fn safety_comment_on_unsafe_block_bites() {
    let accepted = r#"fn f() {
    // SAFETY: the usual shape.
    let rc = unsafe { libc::sigaction(signo, ptr::null(), old.as_mut_ptr()) };
    // SAFETY: all-zero bytes are a valid `sigaction`, and the call only wrote
    // valid field values over them.
    (rc == 0).then(|| unsafe { old.assume_init() }.sa_sigaction)
}

fn g() {
    // Some context first.
    // SAFETY: ignoring a signal installs no code.
    let old_usr2 =
        unsafe { nix::sys::signal::signal(NixSignal::SIGUSR2, SigHandler::SigIgn) }.unwrap();
    let child = || loop {
        // SAFETY: pause(2) is async-signal-safe.
        unsafe { libc::pause() };
    };
    let x = f(unsafe { g() }); // SAFETY: on the same line.
    let s = "unsafe { in a string }";
    // unsafe { in a comment }
    // SAFETY: an attribute may sit between.
    #[allow(clippy::x)]
    unsafe { h() };
}

/// # Safety
/// Declarations need no comment; their blocks do.
pub unsafe fn forwarded() {
    // SAFETY: forwarded from this function's own contract.
    unsafe { inner() }
}
"#;
    let refused = r#"fn f() {
    let x = unsafe { a() };
    // Why not: no reason given.
    let y = unsafe { b() };
    // SAFETY: cut off by a blank line.

    let z = unsafe { c() };
    // SAFETY: this one explains the statement below only.
    let w = 1;
    let v = unsafe { d() };
    /// SAFETY: a doc comment is not a SAFETY comment.
    unsafe { e() }
}
"#;
    let tree = TempTree::new("safety");
    tree.write("crates/procmgr/src/fork.rs", accepted)
        .write("crates/procmgr/src/bad.rs", refused)
        .write("tests/it/bad.rs", "fn t() {\n    unsafe { f() };\n}\n")
        .write("xtask/src/main.rs", "fn main() { unsafe { f() } }\n")
        .write("tests/target/debug/skipped.rs", "fn s() { unsafe { f() } }\n");
    let offences = check_safety_comments(&tree.root);
    assert_eq!(
        places(&offences),
        [
            "crates/procmgr/src/bad.rs:10",
            "crates/procmgr/src/bad.rs:12",
            "crates/procmgr/src/bad.rs:2",
            "crates/procmgr/src/bad.rs:4",
            "crates/procmgr/src/bad.rs:7",
            "tests/it/bad.rs:2",
            "xtask/src/main.rs:1",
        ],
        "{offences:#?}"
    );
}

/// The lexer keeps code, drops comments and blanks literals, across lines.
#[test]
fn lexer_separates_code_comments_and_literals() {
    let source = "let a = \"http://x\"; // note\nlet b = '\"'; let c = '\\''; fn f<'a>(x: &'a str) {}\n\
                  let r = r##\"unsafe {\n  \"# still raw\n\"##; /* block /* nested */\nstill */ code\n\
                  let e = \"esc \\\" unsafe {\";\n";
    let lines = lex(source);
    let code: Vec<&str> = lines.iter().map(|l| l.code.as_str()).collect();
    let comments: Vec<&str> = lines.iter().map(|l| l.comment.as_str()).collect();
    assert_eq!(
        code,
        [
            "let a = \"        \"; ",
            "let b = ' '; let c = ' '; fn f<'a>(x: &'a str) {}",
            "let r = r\"        ",
            "              ",
            "\";  ",
            " code",
            "let e = \"               \";",
        ]
    );
    assert_eq!(comments, ["// note", "", "", "", "/* block /* nested */", "still */", ""]);
}
