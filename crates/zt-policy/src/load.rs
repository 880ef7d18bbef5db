//! Reading policies: a directory of YAML files (`*.yaml`, `*.yml`, searched
//! recursively, in name order), each holding one or more documents separated by
//! `---`, each an AuthorizationPolicy, a PeerAuthentication or a RequestAuthentication. Every problem in every file is reported, each as `file:line: field:
//! what is wrong`; a set with any problem is not used at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{Document, Kind};
use crate::peer_authentication::{self, PeerAuthentication};
use crate::policy::{Origin, Policy};
use crate::request_authentication::{self, RequestAuthentication};

/// Largest policy file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// Most policy files in one directory tree.
pub const MAX_FILES: usize = 10_000;

/// Everything wrong with a set of policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct LoadError {
    /// One line each: `file:line: field: what is wrong`.
    pub problems: Vec<String>,
}

/// A policy file read as text, with the name it is reported under.
#[derive(Debug, Clone)]
pub struct Source {
    /// How errors name it.
    pub name: PathBuf,
    /// Its YAML.
    pub text: String,
}

/// Reads every policy file under `dir`.
pub fn read_dir(dir: &Path) -> Result<Vec<Source>, LoadError> {
    read_files(dir, &["yaml", "yml"])
}

/// Reads every file under `dir` whose extension is one of `extensions`, in
/// name order.
pub fn read_files(dir: &Path, extensions: &[&str]) -> Result<Vec<Source>, LoadError> {
    let fail = |problem: String| LoadError {
        problems: vec![problem],
    };
    let mut files = Vec::new();
    collect(dir, extensions, &mut files).map_err(fail)?;
    files.sort();
    let mut sources = Vec::with_capacity(files.len());
    for file in files {
        let size = std::fs::metadata(&file)
            .map_err(|e| fail(format!("{}: {e}", file.display())))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(fail(format!(
                "{}: larger than {MAX_FILE_BYTES} bytes",
                file.display()
            )));
        }
        let text = std::fs::read_to_string(&file).map_err(|e| fail(format!("{}: {e}", file.display())))?;
        sources.push(Source { name: file, text });
    }
    Ok(sources)
}

fn collect(dir: &Path, extensions: &[&str], files: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if kind.is_dir() {
            collect(&path, extensions, files)?;
        } else if path
            .extension()
            .is_some_and(|ext| extensions.iter().any(|wanted| ext == *wanted))
        {
            if files.len() >= MAX_FILES {
                return Err(format!("{}: more than {MAX_FILES} policy files", dir.display()));
            }
            files.push(path);
        }
    }
    Ok(())
}

/// Reads and compiles every policy in the directory.
pub fn load_dir(dir: &Path) -> Result<Vec<Policy>, LoadError> {
    parse(&read_dir(dir)?)
}

/// Everything a set of policy files holds.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The AuthorizationPolicies.
    pub policies: Vec<Policy>,
    /// The PeerAuthentications.
    pub peer_authentications: Vec<PeerAuthentication>,
    /// The RequestAuthentications.
    pub request_authentications: Vec<RequestAuthentication>,
}

/// Compiles the AuthorizationPolicies of these sources (the other kinds
/// are checked too, and left out); all problems or all policies.
pub fn parse(sources: &[Source]) -> Result<Vec<Policy>, LoadError> {
    parse_all(sources).map(|loaded| loaded.policies)
}

/// Compiles every policy of these sources, of every kind; all problems or
/// all policies.
pub fn parse_all(sources: &[Source]) -> Result<Loaded, LoadError> {
    let mut problems = Vec::new();
    let mut policies: Vec<Policy> = Vec::new();
    let mut peer_authentications = Vec::new();
    let mut request_authentications = Vec::new();
    let mut seen: BTreeMap<(String, String), Origin> = BTreeMap::new();
    for source in sources {
        for (line, chunk) in documents(&source.text) {
            let origin = Origin {
                file: source.name.clone(),
                line,
            };
            let at = |offset: usize| format!("{}:{}", source.name.display(), line + offset);
            if let Some((offset, message)) = duplicate_key(chunk) {
                problems.push(format!("{}: {message}", at(offset)));
                continue;
            }
            match kind_of(chunk) {
                Some(Kind::PeerAuthentication) => {
                    let compiled = read::<peer_authentication::Document>(chunk)
                        .and_then(|document| PeerAuthentication::compile(document, origin, chunk));
                    match compiled {
                        Ok(peer_authentication) => peer_authentications.push(peer_authentication),
                        Err((offset, message)) => problems.push(format!("{}: {message}", at(offset))),
                    }
                    continue;
                }
                Some(Kind::RequestAuthentication) => {
                    let compiled = read::<request_authentication::Document>(chunk)
                        .and_then(|document| RequestAuthentication::compile(document, origin, chunk));
                    match compiled {
                        Ok(request_authentication) => request_authentications.push(request_authentication),
                        Err((offset, message)) => problems.push(format!("{}: {message}", at(offset))),
                    }
                    continue;
                }
                _ => {}
            }
            let document = match read::<Document>(chunk) {
                Ok(document) => document,
                Err((offset, message)) => {
                    problems.push(format!("{}: {message}", at(offset)));
                    continue;
                }
            };
            match Policy::compile(document, origin.clone()) {
                Ok(policy) => {
                    let key = (policy.namespace.clone(), policy.name.clone());
                    if let Some(first) = seen.get(&key) {
                        problems.push(format!(
                            "{}: metadata: {}/{} is already defined at {}:{}",
                            at(0),
                            key.0,
                            key.1,
                            first.file.display(),
                            first.line
                        ));
                    } else {
                        seen.insert(key, origin);
                        policies.push(policy);
                    }
                }
                Err(message) => problems.push(format!("{}: {message}", at(0))),
            }
        }
    }
    problems.extend(peer_authentication::conflicts(&peer_authentications));
    problems.extend(request_authentication::conflicts(&request_authentications));
    if problems.is_empty() {
        Ok(Loaded {
            policies,
            peer_authentications,
            request_authentications,
        })
    } else {
        Err(LoadError { problems })
    }
}

/// The kind a document says it is (anything not readable is read as an
/// AuthorizationPolicy, whose errors say what is wrong).
fn kind_of(chunk: &str) -> Option<Kind> {
    #[derive(Deserialize)]
    struct Header {
        kind: Option<Kind>,
    }
    serde_yaml_ng::from_str::<Header>(chunk).ok()?.kind
}

/// One document read as a `T`, or the line offset (0-based, within the
/// document) and message of what is wrong.
fn read<T: serde::de::DeserializeOwned>(chunk: &str) -> Result<T, (usize, String)> {
    T::deserialize(serde_yaml_ng::Deserializer::from_str(chunk)).map_err(|e| {
        let (offset, message) = located(&e);
        // An error at the end of the input names the last line, not the one
        // after it.
        let last = chunk
            .replace("\r\n", "\n")
            .trim_end_matches(['\n', '\r'])
            .matches(['\n', '\r'])
            .count();
        (offset.min(last), message)
    })
}

/// The documents of a YAML stream with the line each starts on (1-based),
/// empty ones (only comments, or a trailing `---`) left out. A line that is
/// just `---` or `...` at column 0 separates documents: YAML never has one
/// inside a document's content.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        if bare == "---" || bare == "..." {
            documents.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents
        .into_iter()
        .filter(|(_, chunk)| {
            chunk
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// A key repeated in one mapping, as the line offset (0-based, within the
/// document) of its second occurrence and a message naming the first: the
/// YAML parser reports where the mapping starts, which is seldom where the
/// mistake is.
fn duplicate_key(chunk: &str) -> Option<(usize, String)> {
    let e = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(chunk).err()?;
    let message = e.to_string();
    let key = message
        .split_once("duplicate entry with key ")?
        .1
        .split(" at line ")
        .next()?;
    let name = serde_json::from_str::<String>(key).unwrap_or_else(|_| key.to_owned());
    let start = e.location()?;
    let (line, column) = (start.line().checked_sub(1)?, start.column().checked_sub(1)?);
    let mut seen = Vec::new();
    for (index, text) in chunk.lines().enumerate().skip(line) {
        let indent = text.len() - text.trim_start_matches([' ', '-']).len();
        let blank = text.trim().is_empty() || text.trim_start().starts_with('#');
        if index > line && !blank && indent < column {
            break; // the mapping ended
        }
        let key_here = text
            .get(column..)
            .and_then(|rest| rest.strip_prefix(name.as_str()))
            .is_some_and(|rest| rest.trim_start().starts_with(':'));
        if key_here {
            seen.push(index);
        }
    }
    match seen[..] {
        [first, second, ..] => Some((
            second,
            format!("duplicate key {name:?} (first at line {})", first + 1),
        )),
        _ => Some((line, format!("duplicate key {name:?} in this mapping"))),
    }
}

/// The line offset (0-based, within the document) and the message of a YAML
/// error, without serde_yaml's own "at line N column M".
fn located(e: &serde_yaml_ng::Error) -> (usize, String) {
    let message = e.to_string();
    match e.location() {
        Some(location) => {
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message).to_owned();
            (location.line().saturating_sub(1), message)
        }
        None => (0, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_a_line_that_exists() {
        let line_of = |text: &str| {
            let source = Source {
                name: "p.yaml".into(),
                text: text.into(),
            };
            let problem = parse(&[source])
                .err()
                .map(|e| e.problems[0].clone())
                .unwrap_or_default();
            problem.split(':').nth(1).and_then(|n| n.parse::<usize>().ok())
        };
        // Found by the policy_yaml fuzz target: an error at the end of the
        // input, and lines ended by a lone CR, as YAML counts them.
        assert_eq!(line_of("{"), Some(1));
        assert_eq!(line_of("\r\r--"), Some(3));
    }

    #[test]
    fn a_duplicate_key_is_reported_where_it_is_repeated() {
        let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"x\"]\n    to:\n    - operation:\n        paths: [\"/a\"]\nspec:\n  action: DENY\n";
        assert_eq!(
            duplicate_key(policy),
            Some((13, "duplicate key \"spec\" (first at line 5)".to_owned()))
        );
        let nested = policy.replace(
            "spec:\n  action: DENY\n",
            "    to:\n    - operation:\n        paths: [\"/b\"]\n",
        );
        assert_eq!(
            duplicate_key(&nested),
            Some((13, "duplicate key \"to\" (first at line 11)".to_owned()))
        );
        assert_eq!(duplicate_key("a: 1\nb: 2\n"), None);
    }

    #[test]
    fn documents_are_split_with_their_lines() {
        let text = "# header\n---\na: 1\n---\n# only a comment\n---\nb: 2\nc: |\n  text\n---\n";
        let docs = documents(text);
        assert_eq!(docs, vec![(3, "a: 1\n"), (7, "b: 2\nc: |\n  text\n")]);
    }
}
