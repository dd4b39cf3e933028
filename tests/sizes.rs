//! Issue 18's sizes, enforced: no function in `src/` over [`FN_LIMIT`] lines and no file in `src/`
//! over [`FILE_LIMIT`] lines of production code. Past those a reader can no longer hold a function
//! on one screen or a module in their head, and the review found features piling up exactly
//! there; a test keeps the next feature from quietly growing them back.
//!
//! **What is counted.** A file's production code is every line of it — comments, doc comments
//! and blank lines included, since a reader has to get through them too — except the items marked
//! `#[cfg(test)]` (the `mod tests` blocks, test-only methods, enum variants and match arms), with
//! the comments and attributes directly above them, and except files that only a `#[cfg(test)]
//! mod name;` brings in (a blank line between two test items is theirs). A function is counted from the line of its `fn` keyword to the line of
//! its closing brace (its doc comment is not counted; comments inside are); a function inside
//! another counts in both. Functions in test code are not counted.
//!
//! **How.** A small tokenizer, not a Rust parser: it drops comments, string literals (plain, byte,
//! C and raw, `r#"{"#`), char literals (`'{'`, `'\u{7b}'`) and lifetimes, so that the braces
//! left are the code's own, and then tracks brace depth. Its limits: only the exact attribute
//! `#[cfg(test)]` marks test code (`cfg(any(test, feature = "fuzzing"))` items, the property checks, count as production: they are shipped to the fuzz crate); braces
//! produced by a macro's expansion are not seen (only its source); a `#[cfg(test)]` item ends on
//! a whole line, so code after it on the same line would be counted as test code.
//!
//! **Violations tolerated for now** are in [`KNOWN_OVERSIZE`], which may only shrink: an entry
//! that grew, that is now within its limit, or that no longer exists (renamed, split, removed)
//! fails the test. Issue 18 emptied it; it is the place to put a violation only while the
//! change that removes it is under way.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The most lines a function in `src/` may have (issue 18, "Done when").
const FN_LIMIT: usize = 100;

/// The most lines of production code a file in `src/` may have (issue 18, "Done when").
const FILE_LIMIT: usize = 1000;

/// Violations tolerated while a change shrinks them, with their size when measured (none since
/// 7 December 2026, when issue 18's redesign removed the last): a file as its path, a function as `path::Type::fn` (`path::fn` outside an
/// `impl`). Each may only shrink; lower an entry when you shrink it, and take it off once it is
/// within the limit (the test says when, and prints a note when an entry can come down). A
/// key that names several functions (two trait impls' `fmt` for one type) is judged by the
/// largest.
const KNOWN_OVERSIZE: &[(&str, usize)] = &[];

#[test]
fn no_function_or_file_in_src_is_over_its_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let measured = measure_tree(root, "src");
    let limits = Limits {
        function: FN_LIMIT,
        file: FILE_LIMIT,
    };
    let (failures, notes) = check(&measured, limits, KNOWN_OVERSIZE);
    for note in &notes {
        eprintln!("note: {note}");
    }
    assert!(
        failures.is_empty(),
        "issue 18's sizes (functions ≤ {FN_LIMIT} lines, files ≤ {FILE_LIMIT} lines of \
         production code; tests/sizes.rs says how they are counted):\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The check

/// The limits [`check`] holds the tree to.
#[derive(Clone, Copy)]
struct Limits {
    function: usize,
    file: usize,
}

/// What [`measure_tree`] found.
#[derive(Debug, Default)]
struct Measured {
    /// Each file's path (from the crate root, `/`-separated) and production lines.
    files: Vec<(String, usize)>,
    /// Every function outside test code.
    functions: Vec<Function>,
}

/// One function's name, place and size.
#[derive(Debug, Clone)]
struct Function {
    /// `path::Type::fn`, or `path::fn` outside an `impl`, `trait` or `mod`.
    key: String,
    /// The file it is in.
    path: String,
    /// The line of its `fn` keyword (1-based).
    line: usize,
    /// Lines from the `fn` keyword to the closing brace, both included.
    lines: usize,
}

/// Holds `measured` to `limits`, tolerating what `allowed` lists at no more than its size.
/// Returns the failures (each naming `file:line` and the size) and notes (an allowed item that
/// shrank, whose entry can come down).
fn check(
    measured: &Measured,
    limits: Limits,
    allowed: &[(&str, usize)],
) -> (Vec<String>, Vec<String>) {
    // Every size under its key; a key that names several functions (two trait impls' `fmt`)
    // is judged by its largest.
    let mut found: BTreeMap<&str, (usize, String, usize)> = BTreeMap::new();
    let mut over = Vec::new();
    for (path, lines) in &measured.files {
        found.insert(path, (*lines, format!("{path}:1"), limits.file));
        if *lines > limits.file {
            over.push((
                path.as_str(),
                *lines,
                format!("{path}:1"),
                "production lines",
            ));
        }
    }
    for function in &measured.functions {
        let place = format!("{}:{}", function.path, function.line);
        let entry = found
            .entry(&function.key)
            .or_insert((0, place.clone(), limits.function));
        if function.lines > entry.0 {
            *entry = (function.lines, place.clone(), limits.function);
        }
        if function.lines > limits.function {
            over.push((&function.key, function.lines, place, "lines"));
        }
    }
    let allowance: BTreeMap<&str, usize> = allowed.iter().copied().collect();
    let mut failures = Vec::new();
    for (key, size, place, unit) in over {
        let limit = found[key].2;
        match allowance.get(key) {
            Some(&known) if size <= known => {}
            Some(&known) => failures.push(format!(
                "{place}: {key} is {size} {unit}, over the {limit}-line limit, and it grew: \
                 KNOWN_OVERSIZE allows it {known} (it may only shrink)"
            )),
            None => failures.push(format!(
                "{place}: {key} is {size} {unit}, over the {limit}-line limit"
            )),
        }
    }
    let mut notes = Vec::new();
    for (key, known) in allowed {
        match found.get(key) {
            None => failures.push(format!(
                "KNOWN_OVERSIZE lists {key}, which no longer exists (renamed, split or \
                 removed?): take it off the list, and list what it became if that is over"
            )),
            Some((size, place, limit)) if size <= limit => failures.push(format!(
                "{place}: {key} is {size} lines, within the {limit}-line limit now: take it off \
                 KNOWN_OVERSIZE"
            )),
            Some((size, place, _)) if size < known => notes.push(format!(
                "{place}: {key} shrank from {known} to {size} lines: lower its KNOWN_OVERSIZE \
                 entry to {size}"
            )),
            Some(_) => {}
        }
    }
    (failures, notes)
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// Measures every `.rs` file under `root/dir`.
fn measure_tree(root: &Path, dir: &str) -> Measured {
    let mut paths = Vec::new();
    collect_rust_files(&root.join(dir), &mut paths);
    paths.sort();
    let sources: Vec<(String, String)> = paths
        .iter()
        .map(|path| {
            let relative = path.strip_prefix(root).unwrap().to_string_lossy();
            let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{relative}: {e}"));
            (relative.replace('\\', "/"), text)
        })
        .collect();
    // Files brought in only by `#[cfg(test)] mod name;` are test code whole.
    let mut test_only = BTreeSet::new();
    for (path, text) in &sources {
        for name in scan(text).test_modules {
            test_only.extend(module_files(path, &name));
        }
    }
    let mut measured = Measured::default();
    for (path, text) in &sources {
        if test_only.contains(path) {
            continue;
        }
        assert_braces_balance(path, text);
        let scanned = scan(text);
        measured
            .files
            .push((path.clone(), scanned.production_lines));
        for function in scanned.functions {
            measured.functions.push(Function {
                key: format!("{path}::{}", function.name),
                path: path.clone(),
                line: function.line,
                lines: function.lines,
            });
        }
    }
    measured
}

/// Fails if the tokenizer sees the braces of `text` unbalanced, at the end or on the way: it has
/// taken some code for a literal or a comment (or the reverse), and its counts would be wrong.
fn assert_braces_balance(path: &str, text: &str) {
    let mut depth = 0i64;
    for (token, line) in tokenize(text) {
        match token {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => depth -= 1,
            _ => {}
        }
        assert!(
            depth >= 0,
            "{path}:{line}: tests/sizes.rs's tokenizer lost track of the braces here; fix it \
             (or write that code more plainly)"
        );
    }
    assert_eq!(
        depth, 0,
        "{path}: tests/sizes.rs's tokenizer lost track of the braces ({depth} left open); fix \
         it (or write that code more plainly)"
    );
}

/// Every `.rs` file under `dir`, recursively.
fn collect_rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// Where `mod name;` in the file at `path` may live: `dir/name.rs` or `dir/name/mod.rs`, where
/// `dir` is the file's own directory for `mod.rs`, `lib.rs` and `main.rs`, and a directory named
/// after the file otherwise.
fn module_files(path: &str, name: &str) -> [String; 2] {
    let (parent, file) = path.rsplit_once('/').unwrap_or(("", path));
    let stem = file.trim_end_matches(".rs");
    let dir = if matches!(stem, "mod" | "lib" | "main") {
        parent.to_string()
    } else {
        format!("{parent}/{stem}")
    };
    [format!("{dir}/{name}.rs"), format!("{dir}/{name}/mod.rs")]
}

/// What [`scan`] finds in one file.
#[derive(Debug, Default)]
struct Scanned {
    /// Lines outside `#[cfg(test)]` items.
    production_lines: usize,
    /// Functions outside them, named `Type::fn` (or `fn`, `module::fn`…).
    functions: Vec<ScannedFunction>,
    /// Modules declared `#[cfg(test)] mod name;`, whose files are test code.
    test_modules: Vec<String>,
}

/// One function [`scan`] found.
#[derive(Debug)]
struct ScannedFunction {
    name: String,
    line: usize,
    lines: usize,
}

/// A token of Rust source, as far as counting needs: comments are gone, and literals are opaque.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An identifier or keyword.
    Ident(String),
    /// One punctuation character.
    Punct(char),
    /// A string, char or number literal, or a lifetime.
    Literal,
}

/// Splits `text` into tokens, each with its 1-based line.
fn tokenize(text: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    // Advances past chars[from..to], counting newlines.
    let skip = |from: usize, to: usize, line: &mut usize| {
        *line += chars[from..to.min(chars.len())]
            .iter()
            .filter(|&&c| c == '\n')
            .count();
        to.min(chars.len())
    };
    let at = |j: usize| chars.get(j).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            let end = chars[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |p| i + p);
            i = skip(i, end, &mut line);
        } else if c == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let (mut j, mut depth) = (i + 2, 1);
            while j < chars.len() && depth > 0 {
                if chars[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            i = skip(i, j, &mut line);
        } else if let Some(end) = raw_string_end(&chars, i) {
            i = skip(i, end, &mut line);
            tokens.push((Token::Literal, start_line));
        } else if c == '"' || (matches!(c, 'b' | 'c') && at(i + 1) == '"') {
            let mut j = if c == '"' { i + 1 } else { i + 2 };
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = skip(i, j + 1, &mut line);
            tokens.push((Token::Literal, start_line));
        } else if c == '\'' || (c == 'b' && at(i + 1) == '\'') {
            let q = if c == '\'' { i } else { i + 1 };
            if at(q + 1) == '\\' {
                // An escaped char: '\n', '\'', '\u{7b}'.
                let mut j = q + 1;
                while j < chars.len() && chars[j] != '\'' {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                i = skip(i, j + 1, &mut line);
            } else if at(q + 2) == '\'' {
                i = q + 3; // 'x', '{'
            } else {
                // A lifetime or a label: 'a, 'static.
                let mut j = q + 1;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                i = j;
            }
            tokens.push((Token::Literal, start_line));
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i;
            if c == 'r' && at(i + 1) == '#' {
                j += 2; // A raw identifier, r#fn.
            }
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            tokens.push((Token::Ident(chars[i..j].iter().collect()), start_line));
            i = j;
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            tokens.push((Token::Literal, start_line));
            i = j;
        } else {
            tokens.push((Token::Punct(c), start_line));
            i += 1;
        }
    }
    tokens
}

/// If a raw string (`r"…"`, `r#"…"#`, `br#"…"#`, `cr"…"`) starts at `i`, the index past its end.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(chars.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    // Not the end of an identifier such as `bar"`: a raw string's prefix starts a token.
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|&&c| c == '#').count();
    j += hashes;
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && chars[j + 1..].iter().take_while(|&&c| c == '#').count() >= hashes {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

/// Counts one file: its production lines and functions, and its test-only module files.
fn scan(text: &str) -> Scanned {
    let tokens = tokenize(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut scanned = Scanned::default();
    let mut test_lines = BTreeSet::new();
    for (attribute, first_line) in cfg_test_attributes(&tokens) {
        // The comments and attributes directly above belong to the item too.
        let mut start = first_line;
        while start > 1 {
            let above = lines[start - 2].trim_start();
            if !(above.starts_with("//") || above.starts_with("#[")) {
                break;
            }
            start -= 1;
        }
        let (end, declared_module) = item_end(&tokens, attribute);
        scanned.test_modules.extend(declared_module);
        test_lines.extend(start..=end);
    }
    if starts_with_inner_cfg_test(&tokens) {
        test_lines.extend(1..=lines.len());
    }
    // A blank line between two test items is theirs (the one between `mod tests` and `mod size`).
    let is_test = |n: usize, test_lines: &BTreeSet<usize>| test_lines.contains(&n);
    let blank = |n: usize| lines[n - 1].trim().is_empty();
    let between: Vec<usize> = (1..=lines.len())
        .filter(|&n| blank(n) && !is_test(n, &test_lines))
        .filter(|&n| {
            let before = (1..n).rev().find(|&m| !blank(m));
            let after = (n + 1..=lines.len()).find(|&m| !blank(m));
            before.is_some_and(|m| is_test(m, &test_lines))
                && after.is_some_and(|m| is_test(m, &test_lines))
        })
        .collect();
    test_lines.extend(between);
    scanned.production_lines = lines.len() - test_lines.len();
    scanned.functions = functions(&tokens)
        .into_iter()
        .filter(|function| !test_lines.contains(&function.line))
        .collect();
    scanned
}

/// Where each `#[cfg(test)]` starts: the index of its `#` and its line.
fn cfg_test_attributes(tokens: &[(Token, usize)]) -> Vec<(usize, usize)> {
    let pattern = [
        Token::Punct('#'),
        Token::Punct('['),
        Token::Ident("cfg".into()),
        Token::Punct('('),
        Token::Ident("test".into()),
        Token::Punct(')'),
        Token::Punct(']'),
    ];
    (0..tokens.len())
        .filter(|&i| {
            tokens.len() - i >= pattern.len()
                && tokens[i..i + pattern.len()]
                    .iter()
                    .zip(&pattern)
                    .all(|((token, _), expected)| token == expected)
        })
        .map(|i| (i, tokens[i].1))
        .collect()
}

/// Whether the file begins with `#![cfg(test)]`: test code whole.
fn starts_with_inner_cfg_test(tokens: &[(Token, usize)]) -> bool {
    let expected = [
        Token::Punct('#'),
        Token::Punct('!'),
        Token::Punct('['),
        Token::Ident("cfg".into()),
        Token::Punct('('),
        Token::Ident("test".into()),
        Token::Punct(')'),
    ];
    tokens.len() >= expected.len()
        && tokens
            .iter()
            .zip(&expected)
            .all(|((token, _), expected)| token == expected)
}

/// The last line of the item whose attribute starts at token `at`, and the module's name if
/// the item is `mod name;`. The item ends at the first `;` or `,` outside brackets (a `use`, a
/// `mod name;`, an enum variant, a match arm without a block), at the `}` that closes its block
/// (a `mod`, `fn`, `impl`, or an arm's block), or just before the bracket that closes what
/// encloses it (a last match arm without a comma).
fn item_end(tokens: &[(Token, usize)], at: usize) -> (usize, Option<String>) {
    let mut i = at;
    // This and any further attributes.
    while tokens.get(i).map(|t| &t.0) == Some(&Token::Punct('#')) {
        let mut depth = 0;
        i += 1;
        while i < tokens.len() {
            match tokens[i].0 {
                Token::Punct('[') => depth += 1,
                Token::Punct(']') => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
    let module = declared_module(tokens, i);
    let mut depth = 0usize;
    let mut last_line = tokens.get(i).map_or(tokens[at].1, |t| t.1);
    while i < tokens.len() {
        let (token, line) = &tokens[i];
        match token {
            Token::Punct('(' | '[' | '{') => depth += 1,
            Token::Punct(')' | ']' | '}') if depth == 0 => return (last_line, module),
            Token::Punct(close @ (')' | ']' | '}')) => {
                depth -= 1;
                if depth == 0 && *close == '}' {
                    return (*line, module);
                }
            }
            Token::Punct(';' | ',') if depth == 0 => return (*line, module),
            _ => {}
        }
        last_line = *line;
        i += 1;
    }
    (last_line, module)
}

/// The name of the module declared at token `i` without a body (`mod name;`, `pub(crate) mod
/// name;`), if that is what is there.
fn declared_module(tokens: &[(Token, usize)], mut i: usize) -> Option<String> {
    let token = |i: usize| tokens.get(i).map(|t| &t.0);
    if token(i) == Some(&Token::Ident("pub".into())) {
        i += 1;
        if token(i) == Some(&Token::Punct('(')) {
            while token(i).is_some_and(|t| *t != Token::Punct(')')) {
                i += 1;
            }
            i += 1;
        }
    }
    match (token(i), token(i + 1), token(i + 2)) {
        (Some(Token::Ident(word)), Some(Token::Ident(name)), Some(Token::Punct(';')))
            if word == "mod" =>
        {
            Some(name.clone())
        }
        _ => None,
    }
}

/// Every function with a body, named after the `impl`, `trait` or `mod` blocks (and functions)
/// around it.
fn functions(tokens: &[(Token, usize)]) -> Vec<ScannedFunction> {
    // The name each open brace gives what is inside it (None: an anonymous block).
    let mut scopes: Vec<Option<String>> = Vec::new();
    let mut pending: Option<(String, usize)> = None; // A name, and the brace depth it opens at.
    let mut found = Vec::new();
    let mut open: Vec<(String, usize, usize)> = Vec::new(); // Name, line, depth of its body.
    let mut brackets = 0usize; // Open ( and [: a `;` inside (`[u8; 4]`) ends nothing.
    for (i, (token, line)) in tokens.iter().enumerate() {
        match token {
            Token::Punct('(' | '[') => brackets += 1,
            Token::Punct(')' | ']') => brackets = brackets.saturating_sub(1),
            Token::Punct('{') => {
                let name = match pending.take() {
                    Some((name, depth)) if depth == scopes.len() => Some(name),
                    other => {
                        pending = other;
                        None
                    }
                };
                scopes.push(name);
            }
            Token::Punct('}') => {
                scopes.pop();
                if open.last().is_some_and(|f| f.2 == scopes.len()) {
                    let (name, start, _) = open.pop().unwrap();
                    found.push(ScannedFunction {
                        name,
                        line: start,
                        lines: line - start + 1,
                    });
                }
            }
            Token::Punct(';')
                if brackets == 0 && pending.as_ref().is_some_and(|p| p.1 == scopes.len()) =>
            {
                pending = None; // `fn f();` in a trait, `mod name;`.
            }
            Token::Ident(word) if word == "fn" => {
                if let Some((Token::Ident(name), _)) = tokens.get(i + 1) {
                    if has_body(tokens, i + 2) {
                        let path = scope_path(&scopes, name);
                        open.push((path, *line, scopes.len()));
                        pending = Some((name.clone(), scopes.len()));
                    }
                }
            }
            Token::Ident(word) if (word == "mod" || word == "trait") => {
                if let Some((Token::Ident(name), _)) = tokens.get(i + 1) {
                    pending = Some((name.clone(), scopes.len()));
                }
            }
            Token::Ident(word) if word == "impl" && starts_an_item(tokens, i) => {
                if let Some(name) = impl_type(tokens, i + 1) {
                    pending = Some((name, scopes.len()));
                }
            }
            _ => {}
        }
    }
    found
}

/// `Outer::inner::name` from the named scopes around a function.
fn scope_path(scopes: &[Option<String>], name: &str) -> String {
    let mut path = String::new();
    for scope in scopes.iter().flatten() {
        let _ = write!(path, "{scope}::");
    }
    path + name
}

/// Whether the function whose signature starts at token `from` has a body (not `fn f();`): a
/// `{` comes before a `;`, outside the signature's brackets (`[u8; 4]`).
fn has_body(tokens: &[(Token, usize)], from: usize) -> bool {
    let mut depth = 0usize;
    for (token, _) in &tokens[from..] {
        match token {
            Token::Punct('(' | '[') => depth += 1,
            Token::Punct(')' | ']') => depth = depth.saturating_sub(1),
            Token::Punct('{') if depth == 0 => return true,
            Token::Punct(';') if depth == 0 => return false,
            _ => {}
        }
    }
    false
}

/// Whether the `impl` at `i` begins an item (`impl Foo {`), not a type (`-> impl Trait`).
fn starts_an_item(tokens: &[(Token, usize)], i: usize) -> bool {
    match i.checked_sub(1).map(|j| &tokens[j].0) {
        None => true,
        Some(Token::Punct('}' | ';' | '{' | ']')) => true,
        Some(Token::Ident(word)) => word == "unsafe" || word == "default",
        _ => false,
    }
}

/// The type an `impl` block is for, from the tokens after `impl`: the last path segment before
/// its generics, after `for` if it implements a trait (`impl<T> fmt::Display for Wrapper<T>`
/// gives `Wrapper`).
fn impl_type(tokens: &[(Token, usize)], from: usize) -> Option<String> {
    let mut angle = 0usize;
    let mut name = None;
    for (token, _) in &tokens[from..] {
        match token {
            Token::Punct('<') => angle += 1,
            Token::Punct('>') => angle = angle.saturating_sub(1),
            Token::Punct('{' | ';') => break,
            Token::Ident(word) if angle == 0 && word == "where" => break,
            Token::Ident(word) if angle == 0 && word == "for" => name = None,
            Token::Ident(word)
                if angle == 0 && !matches!(word.as_str(), "mut" | "dyn" | "const") =>
            {
                name = Some(word.clone());
            }
            _ => {}
        }
    }
    name
}

// ---------------------------------------------------------------------------------------------
// The counting itself, on small sources

#[test]
fn braces_in_strings_chars_comments_and_raw_strings_are_not_code() {
    let source = r####"fn a() {
    let s = "{ \" {";
    let c = '{';
    let e = '\u{7b}';
    let b = b'}';
    let slash = b'\\';
    let quote = '\'';
    let r = r#"{ "}" {"#;
    let raw2 = br##"}"#"##;
    // {
    /* { /* nested } */ { */
    let l: &'static str = "x";
}
fn b() {}
"####;
    let scanned = scan(source);
    let sizes: Vec<(&str, usize, usize)> = scanned
        .functions
        .iter()
        .map(|f| (f.name.as_str(), f.line, f.lines))
        .collect();
    assert_eq!(sizes, [("a", 1, 13), ("b", 14, 1)]);
    assert_eq!(scanned.production_lines, 14);
}

#[test]
fn cfg_test_items_and_what_is_above_them_are_not_production() {
    let source = r#"pub struct S;

impl S {
    pub fn kept(&self) -> [u8; 2] {
        [0; 2]
    }

    /// Only for tests.
    #[cfg(test)]
    fn helper(&self) {}
}

enum E {
    A,
    #[cfg(test)]
    Hold(u8),
}

// The tests.
#[cfg(test)]
mod tests {
    fn not_counted() {
        let x = '}';
    }
}

#[cfg(test)]
pub(crate) mod testing;
"#;
    let scanned = scan(source);
    let names: Vec<&str> = scanned.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["S::kept"]);
    // 28 lines, less 3 (helper), 2 (Hold), 7 (the tests and the comment above), 2 (testing)
    // and the blank line between those two.
    assert_eq!(scanned.production_lines, 28 - 3 - 2 - 7 - 2 - 1);
    assert_eq!(scanned.test_modules, ["testing"]);
}

#[test]
fn functions_are_named_after_their_impl_trait_or_module() {
    let source = r#"impl<'a, T: Clone> fmt::Display for Wrapper<'a, T> where T: Copy {
    fn fmt(&self) -> impl Iterator<Item = u8> { todo!() }
}
trait Handler {
    fn required(&self);
    fn provided(&self) -> [u8; 2] {
        fn inner() {}
    }
}
mod inner {
    fn free() {}
}
"#;
    let names: Vec<String> = scan(source).functions.into_iter().map(|f| f.name).collect();
    assert_eq!(
        names,
        [
            "Wrapper::fmt",
            "Handler::provided::inner",
            "Handler::provided",
            "inner::free"
        ]
    );
}

#[test]
fn test_only_module_files_are_found_beside_or_below_their_parent() {
    assert_eq!(
        module_files("src/storage/mod.rs", "testing"),
        ["src/storage/testing.rs", "src/storage/testing/mod.rs"]
    );
    assert_eq!(
        module_files("src/storage/pool.rs", "testing"),
        [
            "src/storage/pool/testing.rs",
            "src/storage/pool/testing/mod.rs"
        ]
    );
}

/// The check fails as it should, with `file:line` and the size: a limit lowered below today's
/// sizes, an allowed item that grew, one now within the limit, and one gone.
#[test]
fn violations_name_the_file_the_line_and_the_size() {
    let measured = Measured {
        files: vec![("src/a.rs".into(), 120), ("src/b.rs".into(), 40)],
        functions: vec![
            Function {
                key: "src/a.rs::A::big".into(),
                path: "src/a.rs".into(),
                line: 7,
                lines: 30,
            },
            Function {
                key: "src/b.rs::small".into(),
                path: "src/b.rs".into(),
                line: 3,
                lines: 5,
            },
        ],
    };
    let limits = Limits {
        function: 10,
        file: 100,
    };
    let (failures, _) = check(&measured, limits, &[]);
    assert_eq!(
        failures,
        [
            "src/a.rs:1: src/a.rs is 120 production lines, over the 100-line limit",
            "src/a.rs:7: src/a.rs::A::big is 30 lines, over the 10-line limit",
        ]
    );
    let allowed = [
        ("src/a.rs", 110),
        ("src/a.rs::A::big", 35),
        ("src/b.rs::small", 8),
        ("src/gone.rs", 2000),
    ];
    let (failures, notes) = check(&measured, limits, &allowed);
    assert_eq!(failures.len(), 3, "{failures:#?}");
    assert!(failures[0].starts_with("src/a.rs:1: src/a.rs is 120 production lines"));
    assert!(failures[0].contains("it grew: KNOWN_OVERSIZE allows it 110"));
    assert!(failures[1].starts_with("src/b.rs:3: src/b.rs::small is 5 lines, within"));
    assert!(failures[2].contains("src/gone.rs, which no longer exists"));
    assert_eq!(
        notes,
        [
            "src/a.rs:7: src/a.rs::A::big shrank from 35 to 30 lines: lower its KNOWN_OVERSIZE \
          entry to 30"
        ]
    );
}
