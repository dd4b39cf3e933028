//! The layers of the crate (the last section of the project's STYLE guide, "Layers of oneloop"),
//! checked: every module may use the layers below its own and none above or beside it, and two
//! submodules of one parent never import each other (directly or round a longer loop).
//!
//! A module graph is only kept honest by something that fails. This test reads every file under
//! `src/`, takes each `use` path and each inline `crate::…`, `super::…` and `self::…` path (and
//! `oneloop::…` in `main.rs`), resolves it to the module it names — following `pub use`
//! re-exports, so `use crate::net::Stream` counts as an arrow to `net::stream` — and prints every
//! arrow that breaks a rule, as `file:line`. `ONELOOP_ARCHITECTURE_ARROWS=1 cargo test --test
//! architecture -- --nocapture` prints every arrow it found, good or bad.
//!
//! Only production code is read: a `#[cfg(test)]` item (a `mod tests`, a test-only helper module)
//! is skipped, because tests may reach wherever they need to (the protocols' unit tests use the
//! fuzzing checks above them; the load tool's tests parse the real command line). Comments,
//! doc comments and string literals are blanked before anything is read, so a doc link to a
//! higher layer is not an arrow.
//!
//! The source is read with a small hand-written scanner rather than a Rust parser crate: the
//! paths needed here are a few token shapes, and the test keeps its own parser honest with the
//! unit tests at the bottom (a scanner that silently found nothing would pass every rule).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom first, each as its modules. A module may use modules of lower layers only;
/// two modules of one layer are siblings and may not use each other.
const LAYERS: &[&[&str]] = &[
    // Specs (and the `ProtocolKind` they name), the cached clock, the only unsafe.
    &["service", "clock", "sys"],
    // Sans-I/O: bytes and `now` in, bytes or actions out.
    &["protocol"],
    // The fuzz targets' checks of the protocols and the spec parser (tests and `fuzz/` only).
    &["fuzzing"],
    // Sockets, streams, datagrams, systemd | durable files and the I/O threads | the process's
    // own figures from /proc (the metrics' process_* families).
    &["net", "storage", "process"],
    // What `serve` was asked for, as plain data every driver shares (it holds protocol limits
    // and the opened upload directory, so it sits above them).
    &["options"],
    // The one loop, the blocking foils, the load tool.
    &["reactor", "models", "load"],
    // `oneloop client`, whose stream connect and `--timeout` parser `send` shares.
    &["client"],
    // `oneloop send`, the upload client.
    &["send"],
    // `oneloop generate`: the man page and completions, from the command line's definition.
    &["generate"],
    // The command line.
    &["cli"],
    // The binary, which only calls `cli::main`.
    &["main"],
];

/// Modules no other production module may import, whatever their layer: scaffolding compiled only
/// for tests and the fuzz crate, and the binary.
const NOT_IMPORTED: &[&str] = &["fuzzing", "main"];

/// A module's path from the crate root: `["net", "listener"]`; the root itself is empty.
type ModPath = Vec<String>;

/// One arrow from a module to another, where it was written.
#[derive(Clone, Debug)]
struct Arrow {
    from: ModPath,
    to: ModPath,
    file: String,
    line: usize,
}

/// One source file: its module and its production text, comments and literals blanked.
struct Source {
    module: ModPath,
    file: String,
    clean: String,
}

#[test]
fn no_module_imports_a_higher_layer_or_a_sibling() {
    let crate_graph = Graph::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // A scanner that found nothing would break no rule: make sure it sees arrows known to exist.
    for (from, to) in [
        ("cli", "reactor"),
        ("reactor", "protocol"),
        ("net::listener", "net::systemd"),
    ] {
        assert!(
            crate_graph.has_arrow(from, to),
            "the scanner missed the arrow {from} -> {to}: the test's parser is broken"
        );
    }
    if std::env::var_os("ONELOOP_ARCHITECTURE_ARROWS").is_some() {
        for a in &crate_graph.arrows {
            eprintln!(
                "{} -> {} ({}:{})",
                show(&a.from),
                show(&a.to),
                a.file,
                a.line
            );
        }
    }
    let bad = crate_graph.bad_arrows();
    assert!(
        bad.is_empty(),
        "{} arrow(s) break the layers (see tests/architecture.rs for the layers, bottom first):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// Every module and every arrow between them.
struct Graph {
    modules: BTreeSet<ModPath>,
    arrows: Vec<Arrow>,
}

impl Graph {
    /// Reads every `.rs` file under `src`.
    fn read(src: &Path) -> Graph {
        let mut files = Vec::new();
        collect_rs(src, &mut files);
        files.sort();
        let mut sources = Vec::new();
        let mut test_only = BTreeSet::new();
        for path in &files {
            let relative = path.strip_prefix(src).unwrap();
            let module = module_of(relative);
            let text = fs::read_to_string(path).unwrap();
            let (clean, test_mods) = production(&blank_comments_and_literals(&text));
            for name in test_mods {
                let mut child = module.clone();
                child.push(name);
                test_only.insert(child);
            }
            sources.push(Source {
                module,
                file: format!("src/{}", relative.display()),
                clean,
            });
        }
        // A file whose `mod` line is `#[cfg(test)]` is test code throughout.
        sources.retain(|s| !test_only.iter().any(|t| s.module.starts_with(t)));
        let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
        let resolver = Resolver::new(&modules, &sources);
        let mut arrows = Vec::new();
        for source in &sources {
            for (path, line) in paths_in(&source.clean) {
                let Some(absolute) = resolver.absolute(&source.module, &path) else {
                    continue; // another crate's path, or std's
                };
                arrows.push(Arrow {
                    from: source.module.clone(),
                    to: resolver.resolve(&absolute),
                    file: source.file.clone(),
                    line,
                });
            }
        }
        Graph { modules, arrows }
    }

    /// Whether some arrow goes from `from` (or inside it) to `to` (or inside it), as `a::b`.
    fn has_arrow(&self, from: &str, to: &str) -> bool {
        let split = |path: &str| -> ModPath { path.split("::").map(str::to_owned).collect() };
        let (from, to) = (split(from), split(to));
        self.arrows
            .iter()
            .any(|a| a.from.starts_with(&from) && a.to.starts_with(&to))
    }

    /// Every arrow that breaks a rule, described with its `file:line`.
    fn bad_arrows(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let tops: BTreeSet<&String> = self.modules.iter().filter_map(|m| m.first()).collect();
        for top in tops {
            if layer_of(top).is_none() {
                bad.push(format!(
                    "src/{top}: module `{top}` has no layer: add it to LAYERS in tests/architecture.rs"
                ));
            }
        }
        for arrow in &self.arrows {
            if let Some(why) = breaks_layers(arrow) {
                bad.push(format!("{}: {}", where_(arrow), why));
            }
        }
        bad.extend(self.sibling_cycles());
        // One `use` line naming several items of one module is one arrow.
        bad.dedup();
        bad
    }

    /// Arrows between submodules of one parent that lie on a loop (`net::listener` ⇄
    /// `net::systemd`, or round three siblings).
    fn sibling_cycles(&self) -> Vec<String> {
        // parent -> child -> child -> the arrows behind it.
        let mut edges: BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, Vec<&Arrow>>>> =
            BTreeMap::new();
        for arrow in &self.arrows {
            let common = arrow
                .from
                .iter()
                .zip(&arrow.to)
                .take_while(|(a, b)| a == b)
                .count();
            // The root's children are the layers' business; a child using its parent, or a
            // parent its child, is fine.
            if common == 0 || common >= arrow.from.len() || common >= arrow.to.len() {
                continue;
            }
            edges
                .entry(arrow.from[..common].to_vec())
                .or_default()
                .entry(arrow.from[common].clone())
                .or_default()
                .entry(arrow.to[common].clone())
                .or_default()
                .push(arrow);
        }
        let mut bad = Vec::new();
        for (parent, children) in &edges {
            for (from, targets) in children {
                for (to, arrows) in targets {
                    if reaches(children, to, from) {
                        for arrow in arrows {
                            bad.push(format!(
                                "{}: {} -> {} closes a loop between submodules of {} (one concept \
                                 split wrongly, or two tangled)",
                                where_(arrow),
                                show(&arrow.from),
                                show(&arrow.to),
                                show(parent)
                            ));
                        }
                    }
                }
            }
        }
        bad
    }
}

/// Whether `to` can be reached from `from` along `edges`.
fn reaches<T>(edges: &BTreeMap<String, BTreeMap<String, T>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(node) = stack.pop() {
        if node == to {
            return true;
        }
        if seen.insert(node.clone()) {
            if let Some(next) = edges.get(&node) {
                stack.extend(next.keys().cloned());
            }
        }
    }
    false
}

/// Why `arrow` breaks the layers between top-level modules, if it does.
fn breaks_layers(arrow: &Arrow) -> Option<String> {
    let (Some(from), Some(to)) = (arrow.from.first(), arrow.to.first()) else {
        return None; // the crate root, which only declares the modules
    };
    if from == to {
        return None;
    }
    let (Some(from_layer), Some(to_layer)) = (layer_of(from), layer_of(to)) else {
        return None; // reported once as a module without a layer
    };
    let layer = |index: usize| LAYERS[index].join(" | ");
    let why = if NOT_IMPORTED.contains(&to.as_str()) {
        format!("`{to}` is for tests and fuzz/ only: no library module may import it")
    } else if to_layer > from_layer {
        format!(
            "upward, from layer {} to layer {}",
            layer(from_layer),
            layer(to_layer)
        )
    } else if to_layer == from_layer {
        format!("sideways, within layer {}", layer(to_layer))
    } else {
        return None;
    };
    Some(format!(
        "{} -> {}: {why}",
        show(&arrow.from),
        show(&arrow.to)
    ))
}

/// The index in [`LAYERS`] of a top-level module.
fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|modules| modules.contains(&top))
}

fn where_(arrow: &Arrow) -> String {
    format!("{}:{}", arrow.file, arrow.line)
}

fn show(module: &ModPath) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

fn collect_rs(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The module a file under `src/` defines: `lib.rs` is the root, `main.rs` the binary (a crate of
/// its own, counted as the top-level module `main`), `a/mod.rs` and `a.rs` are `a`, `a/b.rs` is
/// `a::b`.
fn module_of(relative: &Path) -> ModPath {
    let mut parts: ModPath = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.strip_suffix(".rs").unwrap();
    if !(stem == "mod" || (parts.is_empty() && stem == "lib")) {
        parts.push(stem.to_owned());
    }
    parts
}

/// Turns paths as written into the modules they name.
struct Resolver<'a> {
    modules: &'a BTreeSet<ModPath>,
    /// `(module, name)` → the absolute path a `pub use` in that module makes `name` stand for.
    reexports: BTreeMap<(ModPath, String), ModPath>,
}

impl<'a> Resolver<'a> {
    fn new(modules: &'a BTreeSet<ModPath>, sources: &[Source]) -> Resolver<'a> {
        let mut resolver = Resolver {
            modules,
            reexports: BTreeMap::new(),
        };
        let mut reexports = BTreeMap::new();
        for source in sources {
            for (path, alias) in pub_uses(&source.clean) {
                let Some(absolute) = resolver.absolute(&source.module, &path) else {
                    continue;
                };
                let name = alias.unwrap_or_else(|| path.last().unwrap().clone());
                reexports.insert((source.module.clone(), name), absolute);
            }
        }
        resolver.reexports = reexports;
        resolver
    }

    /// `path` as written in `module`, from the crate root; `None` for another crate's path.
    fn absolute(&self, module: &ModPath, path: &[String]) -> Option<ModPath> {
        let (first, rest) = path.split_first()?;
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            // main.rs names the library by its crate name.
            "oneloop" if module == &["main".to_owned()] => Vec::new(),
            "self" => module.clone(),
            "super" => {
                let mut base = module.clone();
                base.pop();
                let mut rest = rest;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                return Some(without_self(base));
            }
            // A path starting at a child module (`use listener::Bound` in net/mod.rs).
            _ => {
                let mut child = module.clone();
                child.push(first.clone());
                if !self.modules.contains(&child) {
                    return None;
                }
                module.clone()
            }
        };
        if !matches!(first.as_str(), "crate" | "oneloop" | "self") {
            base.push(first.clone());
        }
        base.extend(rest.iter().cloned());
        Some(without_self(base))
    }

    /// The module an absolute path lands in: the longest run of module names, following
    /// re-exports (`crate::net::Stream` is `net::stream`'s).
    fn resolve(&self, path: &[String]) -> ModPath {
        self.resolve_within(path, 0)
    }

    fn resolve_within(&self, path: &[String], depth: usize) -> ModPath {
        let mut module = Vec::new();
        for segment in path {
            let mut child = module.clone();
            child.push(segment.clone());
            if self.modules.contains(&child) {
                module = child;
                continue;
            }
            if depth < 8 {
                if let Some(target) = self.reexports.get(&(module.clone(), segment.clone())) {
                    return self.resolve_within(target, depth + 1);
                }
            }
            break;
        }
        module
    }
}

/// A path ending in `self` (`use crate::net::{self, …}`) names the module before it.
fn without_self(mut path: ModPath) -> ModPath {
    if path.last().is_some_and(|s| s == "self") {
        path.pop();
    }
    path
}

/// Every path in `clean` that may name a module of this crate, with its line: each path of every
/// `use` tree, and every inline path starting `crate::`, `super::`, `self::` or `oneloop::`.
fn paths_in(clean: &str) -> Vec<(Vec<String>, usize)> {
    let chars: Vec<char> = clean.chars().collect();
    let mut found = Vec::new();
    let mut uses = Vec::new();
    for (start, end) in use_statements(&chars) {
        let line = line_of(&chars, start);
        let tree: String = chars[start + 3..end].iter().collect();
        for (path, _) in expand_use_tree(&tree) {
            found.push((path, line));
        }
        uses.push((start, end));
    }
    let mut i = 0;
    while i < chars.len() {
        if let Some(&(_, end)) = uses.iter().find(|(s, _)| *s == i) {
            i = end;
            continue;
        }
        if starts_word(&chars, i) {
            let word = word_at(&chars, i);
            // `$crate` is a macro's, and `x::self` is not a path's start.
            let prefixed = matches!(word.as_str(), "crate" | "super" | "self" | "oneloop")
                && (i == 0 || !matches!(chars[i - 1], '$' | ':'));
            if prefixed && chars.get(i + word.len()..i + word.len() + 2) == Some(&[':', ':']) {
                let (path, end) = read_path(&chars, i);
                found.push((path, line_of(&chars, i)));
                i = end;
                continue;
            }
            i += word.len();
            continue;
        }
        i += 1;
    }
    found
}

/// The `pub use` (any visibility but private) paths in `clean`, with their `as` names.
fn pub_uses(clean: &str) -> Vec<(Vec<String>, Option<String>)> {
    let chars: Vec<char> = clean.chars().collect();
    let mut found = Vec::new();
    for (start, end) in use_statements(&chars) {
        let before: String = chars[..start].iter().collect();
        let before = before.trim_end();
        if ["pub", "pub(crate)", "pub(super)"]
            .iter()
            .any(|v| before.ends_with(v))
        {
            let tree: String = chars[start + 3..end].iter().collect();
            found.extend(expand_use_tree(&tree));
        }
    }
    found
}

/// `(start of "use", index of its ";")` for every `use` item.
fn use_statements(chars: &[char]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if starts_word(chars, i) && word_at(chars, i) == "use" {
            let end = (i..chars.len())
                .find(|&j| chars[j] == ';')
                .unwrap_or(chars.len());
            found.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

/// Every full path a use tree (`crate::net::{self, Stream as S, stream::*}`) names, with its
/// `as` name.
fn expand_use_tree(tree: &str) -> Vec<(Vec<String>, Option<String>)> {
    let compact: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    expand_into(&compact, &mut Vec::new(), &mut out);
    out
}

fn expand_into(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Option<String>)>) {
    let tree = tree.trim().trim_start_matches("::");
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head = &tree[..open];
        let close = tree.rfind('}').unwrap_or(tree.len());
        let body = &tree[open + 1..close];
        let pushed: Vec<String> = segments(head);
        let depth = prefix.len();
        prefix.extend(pushed);
        for part in split_top_level(body) {
            expand_into(part, prefix, out);
        }
        prefix.truncate(depth);
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((path, alias)) => (path, Some(alias.trim().to_owned())),
        None => (tree, None),
    };
    let mut full = prefix.clone();
    full.extend(segments(path));
    if full.last().is_some_and(|s| s == "*") {
        full.pop();
    }
    if !full.is_empty() {
        out.push((full, alias));
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Splits `a, b::{c, d}, e` at the commas outside braces.
fn split_top_level(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    parts
}

/// Reads `a::b::c` from `start`; returns its segments and where it ends.
fn read_path(chars: &[char], start: usize) -> (Vec<String>, usize) {
    let mut segments = Vec::new();
    let mut i = start;
    loop {
        if !chars.get(i).is_some_and(|&c| is_ident(c)) {
            break;
        }
        let word = word_at(chars, i);
        i += word.len();
        segments.push(word);
        if chars.get(i..i + 2) == Some(&[':', ':'])
            && chars.get(i + 2).is_some_and(|&c| is_ident(c))
        {
            i += 2;
        } else {
            break;
        }
    }
    (segments, i)
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn starts_word(chars: &[char], i: usize) -> bool {
    is_ident(chars[i]) && (i == 0 || !is_ident(chars[i - 1]))
}

fn word_at(chars: &[char], i: usize) -> String {
    chars[i..].iter().take_while(|&&c| is_ident(c)).collect()
}

fn line_of(chars: &[char], i: usize) -> usize {
    1 + chars[..i].iter().filter(|&&c| c == '\n').count()
}

/// `text` with comments and the insides of string and character literals replaced by spaces
/// (line breaks kept, so line numbers stay right).
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = chars.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(chars.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_ident = i > 0 && is_ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            let end = (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len());
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            let mut j = i;
            while j < chars.len() {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if !prev_ident
            && (c == 'r' || (c == 'b' && next == Some('r')))
            && raw_string_start(&chars, i).is_some()
        {
            let (hashes, body) = raw_string_start(&chars, i).unwrap();
            let closing: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat('#').take(hashes))
                .collect();
            let mut j = body;
            while j < chars.len() && !chars[j..].starts_with(&closing) {
                j += 1;
            }
            blank(&mut out, body, j);
            i = j + closing.len();
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j);
            i = j + 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), or a lifetime ('a), left alone.
            let end = if next == Some('\\') {
                (i + 2..chars.len()).find(|&j| chars[j] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    blank(&mut out, i + 1, end);
                    i = end + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// If a raw string (`r"…"`, `r#"…"#`, `br"…"`) starts at `i`: its number of `#` and where its
/// contents begin.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i + if chars[i] == 'b' { 2 } else { 1 };
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some((hashes, j + 1))
}

/// `clean` with every `#[cfg(test)]` item blanked, and the names of the file modules declared
/// test-only (`#[cfg(test)] mod testing;`).
fn production(clean: &str) -> (String, Vec<String>) {
    const ATTRIBUTE: &str = "#[cfg(test)]";
    let chars: Vec<char> = clean.chars().collect();
    let mut out = chars.clone();
    let mut test_mods = Vec::new();
    let attribute: Vec<char> = ATTRIBUTE.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i..].starts_with(&attribute) {
            i += 1;
            continue;
        }
        let item_start = i + attribute.len();
        let end = item_end(&chars, item_start);
        let item: String = chars[item_start..end].iter().collect();
        let words: Vec<&str> = item
            .split(|c: char| !is_ident(c))
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(at) = words.iter().position(|&w| w == "mod") {
            if item.trim_end().ends_with(';') {
                if let Some(name) = words.get(at + 1) {
                    test_mods.push((*name).to_owned());
                }
            }
        }
        for c in &mut out[i..end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end;
    }
    (out.into_iter().collect(), test_mods)
}

/// Where the item starting at `start` ends, skipping any further attributes before it: just past
/// its `;` or its closing brace, or past the `,` of a test-only enum variant or match arm, or
/// before the brace that closes what it sits in.
fn item_end(chars: &[char], start: usize) -> usize {
    let mut depth = 0i32;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' => depth -= 1,
            '}' if depth == 0 => return i,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    // A match arm's block may be followed by its comma.
                    let after = (i + 1..chars.len()).find(|&j| !chars[j].is_whitespace());
                    return match after {
                        Some(j) if chars[j] == ',' => j + 1,
                        _ => i + 1,
                    };
                }
            }
            ';' | ',' if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// The scanner itself, on small made-up sources: each shape of path it must see, and each place
/// it must not look.
mod scanner {
    use super::*;

    fn paths(source: &str) -> Vec<String> {
        let (clean, _) = production(&blank_comments_and_literals(source));
        paths_in(&clean)
            .into_iter()
            .map(|(path, line)| format!("{line}:{}", path.join("::")))
            .collect()
    }

    #[test]
    fn sees_grouped_uses_and_inline_paths_with_their_lines() {
        let found = paths(
            "use crate::{clock::Now, net::{self, Stream as S}};\n\
             use super::datagram::*;\n\
             fn f() { crate::sys::os_reason(&e); super::super::x::y(); }\n\
             use listener::Bound;\n",
        );
        assert_eq!(
            found,
            [
                "1:crate::clock::Now",
                "1:crate::net::self",
                "1:crate::net::Stream",
                "2:super::datagram",
                "4:listener::Bound",
                "3:crate::sys::os_reason",
                "3:super::super::x::y",
            ]
        );
    }

    #[test]
    fn skips_comments_literals_and_test_items() {
        let found = paths(
            "//! See [`crate::reactor`].\n\
             /* crate::models /* nested */ crate::load */\n\
             const A: &str = \"crate::cli\"; const B: &str = r#\"crate::send \"x\" \"#;\n\
             const C: char = '\"'; fn g<'a>(x: &'a str) {}\n\
             #[cfg(test)]\nmod tests { use crate::cli::Cli; fn t() { crate::load::x(); } }\n\
             #[cfg(test)]\nuse crate::client;\n\
             pub(crate) fn h() { crate::clock::now(); }\n",
        );
        assert_eq!(found, ["9:crate::clock::now"]);
    }

    #[test]
    fn a_test_only_file_module_is_named() {
        let (_, test_mods) = production("#[cfg(test)]\nmod testing;\npub mod durable;\n");
        assert_eq!(test_mods, ["testing"]);
    }

    #[test]
    fn file_names_map_to_modules() {
        let m = |p: &str| module_of(Path::new(p)).join("::");
        assert_eq!(m("lib.rs"), "");
        assert_eq!(m("main.rs"), "main");
        assert_eq!(m("net/mod.rs"), "net");
        assert_eq!(m("net/listener.rs"), "net::listener");
        assert_eq!(m("cli.rs"), "cli");
    }
}
