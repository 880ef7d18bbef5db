//! Rego, OPA's policy language, evaluated in process (regorus).
//!
//! Modules are Rego v1 by default; a module that does not parse as v1 but does
//! as v0 (`import input`, `default allow = false`, `allow { … }`) is taken as v0,
//! so policies written for OPA before 1.0 load as written. Data documents are
//! merged under `data`. A set is prepared whole when it changes (a module that
//! does not parse is refused then, not at the first query; an unknown function
//! is an error of the query that reaches it); queries run on a clone of the
//! prepared engine, with a time limit and a memory limit.
//!
//! The memory limit is regorus's (`allocator-memory-limits`): mimalloc is the
//! process's allocator and counts every live byte, and the interpreter, the
//! builtins, the parser and value building check that count as they go, so
//! an evaluation that would pass the limit stops with an error instead of
//! taking the process down. The count is the **whole process's** heap, not one
//! query's: a query fails when the process as a whole holds more than the
//! limit while it runs, so queries running beside a runaway one may fail with
//! it (each answers an error; nothing else in the process is affected, since
//! only Rego checks the limit). `numbers.range` and `numbers.range_step` are
//! replaced by versions that refuse a range whose array alone would pass the
//! limit, since regorus reserves the whole array before its first check.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;

/// How long one query may run, unless configured.
pub const DEFAULT_EVAL_LIMIT: Duration = Duration::from_secs(1);

/// How many bytes the process may hold while Rego runs, unless configured:
/// 1 GiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;

/// Bounds the memory Rego may use: from now on an evaluation, a module's
/// parse or a value's construction fails once the process holds more than
/// `bytes` of heap (see the module's documentation: the bound is process-wide).
pub fn set_memory_limit(bytes: u64) {
    regorus::set_global_memory_limit(Some(bytes));
}

/// The memory limit in force; [`DEFAULT_MEMORY_LIMIT`] is set by the first
/// compile if none was.
pub fn memory_limit() -> u64 {
    regorus::global_memory_limit().unwrap_or(DEFAULT_MEMORY_LIMIT)
}

/// Rego never runs unbounded: the default applies unless one was set.
fn ensure_memory_limit() {
    if regorus::global_memory_limit().is_none() {
        set_memory_limit(DEFAULT_MEMORY_LIMIT);
    }
}

/// A module that does not parse or compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{id}: {message}")]
pub struct ModuleError {
    /// The module's id (its file name, or the id it was PUT under).
    pub id: String,
    /// What is wrong, with the row and column regorus reports.
    pub message: String,
}

/// Why a query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The input is not usable (not JSON, say).
    #[error("input: {0}")]
    Input(String),
    /// Evaluation failed: a conflict, a builtin's error, the time limit.
    #[error("{0}")]
    Eval(String),
}

/// Compiled Rego modules and data, ready to answer queries.
#[derive(Clone)]
pub struct RegoPolicies {
    engine: regorus::Engine,
    modules: BTreeMap<String, String>,
    /// Module id → its package path (`data.a.b`).
    packages: BTreeMap<String, String>,
    data: serde_json::Value,
    eval_limit: Duration,
}

impl std::fmt::Debug for RegoPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegoPolicies({:?})", self.modules.keys().collect::<Vec<_>>())
    }
}

impl RegoPolicies {
    /// Compiles `modules` (id → Rego text) with `data` (a JSON object).
    pub fn compile(
        modules: BTreeMap<String, String>,
        data: serde_json::Value,
        eval_limit: Duration,
    ) -> Result<Self, Vec<ModuleError>> {
        ensure_memory_limit();
        let mut engine = regorus::Engine::new();
        bounded_builtins(&mut engine).map_err(|message| {
            vec![ModuleError {
                id: "(engine)".into(),
                message,
            }]
        })?;
        let mut errors = Vec::new();
        let mut packages = BTreeMap::new();
        for (id, text) in &modules {
            match add_module(&mut engine, id, text) {
                Ok(package) => {
                    packages.insert(id.clone(), package);
                }
                Err(message) => errors.push(ModuleError {
                    id: id.clone(),
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if !data.is_null() {
            engine.add_data(regorus::Value::from(data.clone())).map_err(|e| {
                vec![ModuleError {
                    id: "data".into(),
                    message: e.to_string(),
                }]
            })?;
        }
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: eval_limit,
            check_interval: NonZeroU32::MIN,
        });
        // A trivial query prepares every module now (rule conflicts found at
        // compile time, recursion); functions are resolved when a rule runs.
        engine.eval_query("true".into(), false).map_err(|e| {
            vec![ModuleError {
                id: "(compile)".into(),
                message: e.to_string(),
            }]
        })?;
        Ok(Self {
            engine,
            modules,
            packages,
            data,
            eval_limit,
        })
    }

    /// The modules, by id.
    pub fn modules(&self) -> &BTreeMap<String, String> {
        &self.modules
    }

    /// A module's package path (`data.a.b`).
    pub fn package_of(&self, id: &str) -> Option<&str> {
        self.packages.get(id).map(String::as_str)
    }

    /// This set with one module added or replaced, compiled.
    pub fn with_module(&self, id: &str, text: &str) -> Result<Self, Vec<ModuleError>> {
        let mut modules = self.modules.clone();
        modules.insert(id.to_owned(), text.to_owned());
        Self::compile(modules, self.data.clone(), self.eval_limit)
    }

    /// This set without a module, compiled; `None` if there is no such module.
    pub fn without_module(&self, id: &str) -> Option<Result<Self, Vec<ModuleError>>> {
        let mut modules = self.modules.clone();
        modules.remove(id)?;
        Some(Self::compile(modules, self.data.clone(), self.eval_limit))
    }

    /// The value of the document at `path` (under `data`) for `input`; `None`
    /// when it is undefined.
    pub fn query(
        &self,
        path: &[&str],
        input: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, QueryError> {
        // A panic inside regorus (an arithmetic corner, say) is this query's
        // error, never the process's end: the engine is this query's own clone.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.query_unguarded(path, input)))
            .unwrap_or_else(|_| Err(QueryError::Eval("the Rego evaluator failed (panicked)".into())))
    }

    fn query_unguarded(
        &self,
        path: &[&str],
        input: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, QueryError> {
        let mut engine = self.engine.clone();
        if let Some(input) = input {
            engine.set_input(regorus::Value::from(input.clone()));
        }
        // A rule's path evaluates that rule alone; anything else (a package, a
        // data document) as a query.
        // (A failing rule is evaluated again as a query, which reports its error.)
        let rule = if path.len() >= 2 {
            engine.eval_rule(query_of(path)).ok()
        } else {
            None
        };
        let value = match rule {
            Some(value) => value,
            None => {
                let results = engine
                    .eval_query(query_of(path), false)
                    .map_err(|e| QueryError::Eval(e.to_string()))?;
                let Some(value) = results
                    .result
                    .into_iter()
                    .next()
                    .and_then(|r| r.expressions.into_iter().next())
                    .map(|e| e.value)
                else {
                    return Ok(None);
                };
                value
            }
        };
        if value == regorus::Value::Undefined {
            return Ok(None);
        }
        let json = serde_json::to_value(&value).map_err(|e| QueryError::Eval(e.to_string()))?;
        drop(value);
        // The JSON copy of a result is built outside regorus's checks.
        regorus::check_global_memory_limit().map_err(|e| QueryError::Eval(format!("result: {e}")))?;
        Ok(Some(json))
    }
}

/// Replaces `numbers.range`, `numbers.range_step`, `replace` and
/// `strings.replace_n` (extensions are looked up before builtins) with
/// versions that refuse a result that would pass the memory limit before
/// building it: regorus's own reserve or build the whole result first, which
/// no later check can stop (`numbers.range(1, 1e12)` asks the system for 16 TB
/// at once and aborts the process when refused; `replace(s, "x", s)` squares
/// the size of `s`).
fn bounded_builtins(engine: &mut regorus::Engine) -> Result<(), String> {
    engine
        .add_extension(
            "numbers.range".into(),
            2,
            Box::new(|args: Vec<regorus::Value>| Ok(range("numbers.range", &args, false)?)),
        )
        .map_err(|e| e.to_string())?;
    engine
        .add_extension(
            "numbers.range_step".into(),
            3,
            Box::new(|args: Vec<regorus::Value>| Ok(range("numbers.range_step", &args, true)?)),
        )
        .map_err(|e| e.to_string())?;
    engine
        .add_extension(
            "replace".into(),
            3,
            Box::new(|args: Vec<regorus::Value>| {
                let [s, old, new] = [0, 1, 2].map(|i| string("replace", args.get(i)));
                Ok(regorus::Value::String(
                    replaced("replace", s?, old?, new?)?.into(),
                ))
            }),
        )
        .map_err(|e| e.to_string())?;
    engine
        .add_extension(
            "strings.replace_n".into(),
            2,
            Box::new(|args: Vec<regorus::Value>| Ok(replace_n(&args)?)),
        )
        .map_err(|e| e.to_string())?;
    // sprintf pads to the widths its format names, in one allocation each
    // (`%04000000000d` is 4 GB): the widths are checked first, and the
    // formatting left to regorus's own sprintf, run in an engine that has it.
    let mut formatter = regorus::Engine::new();
    formatter
        .add_policy(
            "zt_sprintf.rego".into(),
            "package zt_sprintf\nout := sprintf(input.format, input.values)\n".into(),
        )
        .map_err(|e| e.to_string())?;
    engine
        .add_extension(
            "sprintf".into(),
            2,
            Box::new(move |args: Vec<regorus::Value>| Ok(sprintf(&formatter, args)?)),
        )
        .map_err(|e| e.to_string())
}

/// `sprintf(format, values)` as regorus formats it, refused before anything is
/// built when the widths and precisions its format asks for add up to more
/// than the memory limit.
fn sprintf(
    formatter: &regorus::Engine,
    mut args: Vec<regorus::Value>,
) -> Result<regorus::Value, BuiltinError> {
    const NAME: &str = "sprintf";
    let format = string(NAME, args.first())?;
    let size = padding(format);
    let limit = memory_limit();
    if size > u128::from(limit) {
        return Err(BuiltinError::TooLong {
            name: NAME,
            size,
            limit,
        });
    }
    let values = args.pop().unwrap_or(regorus::Value::Undefined);
    let format = args.pop().unwrap_or(regorus::Value::Undefined);
    let mut input = regorus::Value::new_object();
    let fields = input
        .as_object_mut()
        .map_err(|e| BuiltinError::Format(e.to_string()))?;
    fields.insert(regorus::Value::String("format".into()), format);
    fields.insert(regorus::Value::String("values".into()), values);
    let mut engine = formatter.clone();
    engine.set_input(input);
    engine
        .eval_rule("data.zt_sprintf.out".into())
        .map_err(|e| BuiltinError::Format(e.to_string()))
}

/// The widths and precisions a sprintf format asks for, summed: each `%`
/// directive's digits (`%08d`, `%.3f`, `%20s`) as regorus's sprintf reads them.
fn padding(format: &str) -> u128 {
    let mut total: u128 = 0;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        match chars.peek() {
            Some('%') => {
                chars.next();
            }
            Some(&first) if first == '.' || first.is_ascii_digit() => {
                let mut width: u128 = 0;
                if first == '.' {
                    chars.next();
                }
                while let Some(digit) = chars.peek().and_then(|c| c.to_digit(10)) {
                    chars.next();
                    width = width.saturating_mul(10).saturating_add(u128::from(digit));
                }
                total = total.saturating_add(width);
            }
            _ => {}
        }
    }
    total
}

/// A string argument of `name`.
fn string<'a>(name: &'static str, value: Option<&'a regorus::Value>) -> Result<&'a str, BuiltinError> {
    match value {
        Some(regorus::Value::String(s)) => Ok(s),
        _ => Err(BuiltinError::NotString(name)),
    }
}

/// `s` with every `old` replaced by `new` (as `str::replace`, which regorus's
/// builtins use), refused before it is built if it would pass the memory
/// limit: one replacement multiplies sizes, so a single call could otherwise
/// ask for more than any later check could stop.
fn replaced(name: &'static str, s: &str, old: &str, new: &str) -> Result<String, BuiltinError> {
    let count = if old.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(old).count()
    } as u128;
    let size = (s.len() as u128)
        .saturating_sub(count.saturating_mul(old.len() as u128))
        .saturating_add(count.saturating_mul(new.len() as u128));
    let limit = memory_limit();
    if size > u128::from(limit) {
        return Err(BuiltinError::TooLong { name, size, limit });
    }
    Ok(s.replace(old, new))
}

/// `strings.replace_n` as regorus gives it (each pattern in turn, in key
/// order), each step bounded as [`replaced`].
fn replace_n(args: &[regorus::Value]) -> Result<regorus::Value, BuiltinError> {
    const NAME: &str = "strings.replace_n";
    let Some(regorus::Value::Object(patterns)) = args.first() else {
        return Err(BuiltinError::Patterns(NAME));
    };
    let mut s = string(NAME, args.get(1))?.to_owned();
    for (old, new) in patterns.iter() {
        let (regorus::Value::String(old), regorus::Value::String(new)) = (old, new) else {
            return Err(BuiltinError::Patterns(NAME));
        };
        s = replaced(NAME, &s, old, new)?;
        regorus::check_global_memory_limit().map_err(BuiltinError::Memory)?;
    }
    Ok(regorus::Value::String(s.into()))
}

/// Why a bounded builtin refused its arguments.
#[derive(Debug, thiserror::Error)]
enum BuiltinError {
    #[error("{0}: operands must be numbers")]
    NotNumber(&'static str),
    #[error("{0}: step must be a positive integer")]
    Step(&'static str),
    #[error("{0}: could not determine number of elements")]
    Count(&'static str),
    #[error("{name}: {count} elements exceed the memory limit ({limit} bytes)")]
    TooLarge {
        name: &'static str,
        count: u128,
        limit: u64,
    },
    #[error("{name}: a string of {size} bytes exceeds the memory limit ({limit} bytes)")]
    TooLong {
        name: &'static str,
        size: u128,
        limit: u64,
    },
    #[error("{0}: operands must be strings")]
    NotString(&'static str),
    #[error("{0}: expects an object of string keys and values, then a string")]
    Patterns(&'static str),
    #[error("{0}")]
    Memory(regorus::LimitError),
    #[error("sprintf: {0}")]
    Format(String),
}

/// The integers from `args[0]` to `args[1]` (both included, descending if the
/// second is smaller) by `args[2]` if `stepped` (else 1), as regorus's builtins
/// give them: a bound that is not an integer makes the range undefined.
fn range(name: &'static str, args: &[regorus::Value], stepped: bool) -> Result<regorus::Value, BuiltinError> {
    let integer = |v: &regorus::Value| match v {
        regorus::Value::Number(n) if n.is_integer() => Ok(n.as_i128()),
        regorus::Value::Number(_) => Ok(None),
        _ => Err(BuiltinError::NotNumber(name)),
    };
    let (Some(from), Some(to)) = (args.first(), args.get(1)) else {
        return Err(BuiltinError::Count(name));
    };
    let (from, to) = (integer(from)?, integer(to)?);
    let step = match args.get(2).filter(|_| stepped) {
        None => 1,
        Some(step) => match integer(step) {
            Ok(Some(step)) if step > 0 => step,
            _ => return Err(BuiltinError::Step(name)),
        },
    };
    let (Some(from), Some(to)) = (from, to) else {
        return Ok(regorus::Value::Undefined);
    };
    let count = to
        .checked_sub(from)
        .map(|span| span.unsigned_abs() / step.unsigned_abs() + 1)
        .ok_or(BuiltinError::Count(name))?;
    let limit = memory_limit();
    let element = std::mem::size_of::<regorus::Value>() as u128;
    if count.saturating_mul(element) > u128::from(limit) {
        return Err(BuiltinError::TooLarge { name, count, limit });
    }
    let step = if to < from { -step } else { step };
    let mut values = Vec::with_capacity(usize::try_from(count).map_err(|_| BuiltinError::Count(name))?);
    let mut value = from;
    for i in 0..count {
        values.push(regorus::Value::from(value));
        value = value.saturating_add(step);
        if i % 4096 == 0 {
            regorus::check_global_memory_limit().map_err(BuiltinError::Memory)?;
        }
    }
    Ok(regorus::Value::from(values))
}

/// Parses a module as Rego v1, or else as v0 (the v1 error if neither);
/// returns its package path.
fn add_module(engine: &mut regorus::Engine, id: &str, text: &str) -> Result<String, String> {
    // `import input` (OPA before 1.0 wrote it) changes nothing; regorus would
    // print a warning to standard error on every load. The line stays a line,
    // so positions in errors do not move.
    let without_input_import;
    let text = if text.lines().any(|line| line.trim() == "import input") {
        without_input_import = text
            .split_inclusive('\n')
            .map(|line| if line.trim() == "import input" { "\n" } else { line })
            .collect::<String>();
        without_input_import.as_str()
    } else {
        text
    };
    engine.set_rego_v0(false);
    let as_v1 = match engine.add_policy(id.to_owned(), text.to_owned()) {
        Ok(package) => return Ok(package),
        Err(e) => e.to_string(),
    };
    engine.set_rego_v0(true);
    let as_v0 = engine.add_policy(id.to_owned(), text.to_owned());
    engine.set_rego_v0(false);
    as_v0.map_err(|_| as_v1)
}

/// A Rego test's outcome, as `opa test` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOutcome {
    /// The rule is true.
    Pass,
    /// The rule is false or undefined.
    Fail,
    /// Evaluating it failed.
    Error(String),
}

/// One `test_*` rule and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// `data.package.test_name`.
    pub name: String,
    /// The module it is in.
    pub module: String,
    /// What it gave.
    pub outcome: TestOutcome,
}

impl RegoPolicies {
    /// Runs every rule whose name starts with `test_` (each once, without
    /// input), in module order.
    pub fn run_tests(&self) -> Vec<TestResult> {
        let mut results = Vec::new();
        for (id, text) in &self.modules {
            let Some(package) = self.packages.get(id) else {
                continue;
            };
            let path: Vec<&str> = package.split('.').skip(1).collect();
            for name in test_rules(text) {
                let mut full = path.clone();
                full.push(&name);
                let outcome = match self.query(&full, None) {
                    Ok(Some(serde_json::Value::Bool(true))) => TestOutcome::Pass,
                    Ok(_) => TestOutcome::Fail,
                    Err(e) => TestOutcome::Error(e.to_string()),
                };
                results.push(TestResult {
                    name: format!("{package}.{name}"),
                    module: id.clone(),
                    outcome,
                });
            }
        }
        results
    }
}

/// The names of the rules a module defines whose names start with `test_`, in
/// order, each once: a rule head starts a line.
fn test_rules(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in text.lines() {
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.starts_with("test_") && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Whether an authorization rule's result allows, as OPA-Envoy reads it: `true`,
/// or an object whose `allowed` is `true`. Anything else (undefined included)
/// denies.
pub fn allows(result: Option<&serde_json::Value>) -> bool {
    match result {
        Some(serde_json::Value::Bool(allowed)) => *allowed,
        Some(serde_json::Value::Object(decision)) => {
            decision.get("allowed") == Some(&serde_json::Value::Bool(true))
        }
        _ => false,
    }
}

/// OPA-Envoy's `parsed_path` and `parsed_query` of a request target: the
/// path's segments and the query's parameters, percent-decoded; a fragment is
/// ignored.
pub fn parsed_path_and_query(target: &str) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let mut parameters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        parameters
            .entry(percent_decode(&key.replace('+', " ")))
            .or_default()
            .push(percent_decode(&value.replace('+', " ")));
    }
    (segments, parameters)
}

/// `%XX` decoded (invalid escapes kept as written).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `data.a.b` for `["a", "b"]`; keys that are not identifiers are quoted
/// (`data.a["b-c"]`).
fn query_of(path: &[&str]) -> String {
    let mut query = String::from("data");
    for segment in path {
        let identifier = segment
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && segment.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if identifier {
            query.push('.');
            query.push_str(segment);
        } else {
            query.push('[');
            // A JSON string is a Rego string.
            query.push_str(&serde_json::Value::from(*segment).to_string());
            query.push(']');
        }
    }
    query
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use serde_json::json;

    use super::*;

    fn one(id: &str, text: &str) -> Result<RegoPolicies, Vec<ModuleError>> {
        RegoPolicies::compile(
            [(id.to_owned(), text.to_owned())].into(),
            serde_json::Value::Null,
            DEFAULT_EVAL_LIMIT,
        )
    }

    #[test]
    fn v0_and_v1_modules_load_as_written() {
        let v0 = one(
            "allow.rego",
            "package authz\nimport input\ndefault allow = false\nallow { input.user == \"alice\" }\n",
        )
        .unwrap();
        assert_eq!(
            v0.query(&["authz", "allow"], Some(&json!({"user": "alice"})))
                .unwrap(),
            Some(json!(true))
        );
        assert_eq!(
            v0.query(&["authz", "allow"], Some(&json!({"user": "bob"})))
                .unwrap(),
            Some(json!(false))
        );
        let v1 = one(
            "v1.rego",
            "package authz\ndefault allow := false\nallow if input.user == \"alice\"\n",
        )
        .unwrap();
        assert_eq!(
            v1.query(&["authz", "allow"], Some(&json!({"user": "alice"})))
                .unwrap(),
            Some(json!(true))
        );
        // A package is a document too; an unknown path is undefined.
        assert_eq!(v1.query(&["authz"], None).unwrap(), Some(json!({"allow": false})));
        assert_eq!(v1.query(&["nothing", "here"], None).unwrap(), None);
    }

    #[test]
    fn bad_modules_are_refused_with_their_id() {
        let errors = one("broken.rego", "package x\nallow if {").unwrap_err();
        assert_eq!(errors[0].id, "broken.rego");
        // regorus resolves functions when a rule runs: an unknown one is an
        // evaluation error of the query that reaches it.
        let lazy = one("undefined.rego", "package x\nallow if no_such_function(1)\n").unwrap();
        let error = lazy.query(&["x", "allow"], None).unwrap_err();
        assert!(error.to_string().contains("no_such_function"), "{error}");
    }

    #[test]
    fn data_documents_and_quoted_paths() {
        let policies = RegoPolicies::compile(
            [("p.rego".to_owned(), "package p\nroles := data.roles\n".to_owned())].into(),
            json!({"roles": {"alice": ["admin"]}, "odd-key": {"x": 1}}),
            DEFAULT_EVAL_LIMIT,
        )
        .unwrap();
        assert_eq!(
            policies.query(&["p", "roles", "alice"], None).unwrap(),
            Some(json!(["admin"]))
        );
        assert_eq!(policies.query(&["odd-key", "x"], None).unwrap(), Some(json!(1)));
        assert_eq!(query_of(&["a", "b-c", "0"]), "data.a[\"b-c\"][\"0\"]");
    }

    #[test]
    fn test_rules_pass_fail_and_error_as_opa_test_reports_them() {
        let policies = one(
            "p_test.rego",
            "package p\nallow if input.user == \"alice\"\n\ntest_alice if allow with input as {\"user\": \"alice\"}\ntest_bob_denied if not allow with input as {\"user\": \"bob\"}\ntest_wrong if allow with input as {\"user\": \"eve\"}\ntest_error if 1 / 0\n",
        )
        .unwrap();
        let outcomes: Vec<(String, TestOutcome)> = policies
            .run_tests()
            .into_iter()
            .map(|r| (r.name, r.outcome))
            .collect();
        assert_eq!(outcomes[0], ("data.p.test_alice".into(), TestOutcome::Pass));
        assert_eq!(outcomes[1], ("data.p.test_bob_denied".into(), TestOutcome::Pass));
        assert_eq!(outcomes[2], ("data.p.test_wrong".into(), TestOutcome::Fail));
        assert_eq!(outcomes.len(), 4);
        assert_ne!(outcomes[3].1, TestOutcome::Pass);
    }

    fn memory_error(policies: &RegoPolicies, rule: &str) -> String {
        let error = policies.query(&["bomb", rule], None).unwrap_err().to_string();
        assert!(error.contains("memory limit"), "{rule}: {error}");
        error
    }

    #[test]
    fn rego_memory_bomb_ranges_are_refused_before_they_are_reserved() {
        // Under the default limit (1 GiB): these ranges are refused by their
        // size alone, whatever the process holds.
        let policies = one(
            "bomb.rego",
            "package bomb\n\
             example := count([i | some i in numbers.range(1, 1e9)])\n\
             huge := count(numbers.range(1, 1e12))\n\
             down := count(numbers.range(1e12, 1))\n\
             stepped := count(numbers.range_step(1, 1e15, 1))\n\
             widest := count(numbers.range(-9223372036854775807, 9223372036854775807))\n\
             zero_step := numbers.range_step(1, 10, 0)\n\
             ok := count(numbers.range(1, 10))\n",
        )
        .unwrap();
        for rule in ["example", "huge", "down", "stepped", "widest"] {
            let error = memory_error(&policies, rule);
            assert!(
                error.contains("elements exceed the memory limit"),
                "{rule}: {error}"
            );
        }
        // regorus's own numbers.range_step divides by a zero step; ours refuses it.
        let error = policies
            .query(&["bomb", "zero_step"], None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("step must be a positive integer"), "{error}");
        // The same set answers a sane query afterwards.
        assert_eq!(policies.query(&["bomb", "ok"], None).unwrap(), Some(json!(10)));
    }

    #[test]
    fn rego_memory_bomb_replacements_are_refused_before_they_are_built() {
        let policies = one(
            "bomb.rego",
            "package bomb\n\
             s := concat(\"\", [\"x\" | some _ in numbers.range(1, 100000)])\n\
             squared := count(replace(s, \"x\", s))\n\
             empty_old := count(replace(s, \"\", s))\n\
             patterns := count(strings.replace_n({\"x\": s}, s))\n\
             same := replace(\"a-b-c\", \"-\", \"+\")\n\
             inserted := replace(\"ab\", \"\", \"-\")\n\
             in_order := strings.replace_n({\"a\": \"b\", \"b\": \"c\"}, \"ab\")\n\
             bad := strings.replace_n({\"a\": 1}, \"ab\")\n",
        )
        .unwrap();
        for rule in ["squared", "empty_old", "patterns"] {
            let error = memory_error(&policies, rule);
            assert!(
                error.contains("bytes exceeds the memory limit"),
                "{rule}: {error}"
            );
        }
        let get = |rule: &str| policies.query(&["bomb", rule], None).unwrap();
        assert_eq!(get("same"), Some(json!("a+b+c")));
        assert_eq!(get("inserted"), Some(json!("-a-b-")));
        // regorus applies the patterns one after the other, in key order.
        assert_eq!(get("in_order"), Some(json!("cc")));
        let error = policies.query(&["bomb", "bad"], None).unwrap_err().to_string();
        assert!(error.contains("string keys and values"), "{error}");
    }

    #[test]
    fn sprintf_widths_past_the_memory_limit_are_refused_and_the_rest_formats_as_before() {
        let policies = one(
            "fmt.rego",
            "package bomb\n\
             padded := sprintf(\"%04000000000d\", [1])\n\
             precise := sprintf(\"%.4000000000f\", [1])\n\
             wrapping := sprintf(\"%099999999999999999999d\", [1])\n\
             many := sprintf(concat(\"\", [\"%0600000000d\" | some _ in numbers.range(1, 2)]), [1, 2])\n\
             plain := sprintf(\"%s is %d (%05d, %.2f, 100%%, %v)\", [\"x\", 42, 7, 3.14159, [1]])\n\
             missing := sprintf(\"%d %d\", [1])\n",
        )
        .unwrap();
        for rule in ["padded", "precise", "wrapping", "many"] {
            let error = memory_error(&policies, rule);
            assert!(
                error.contains("bytes exceeds the memory limit"),
                "{rule}: {error}"
            );
        }
        assert_eq!(
            policies.query(&["bomb", "plain"], None).unwrap(),
            Some(json!("x is 42 (00007, 3.14, 100%, [1])"))
        );
        let error = policies
            .query(&["bomb", "missing"], None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("sprintf"), "{error}");
    }

    #[test]
    fn bounded_ranges_give_what_the_builtins_give() {
        let policies = one(
            "r.rego",
            "package r\n\
             up := numbers.range(1, 3)\n\
             down := numbers.range(3, 1)\n\
             one := numbers.range(5, 5)\n\
             negative := numbers.range(-2, 0)\n\
             stepped := numbers.range_step(1, 10, 3)\n\
             stepped_down := numbers.range_step(10, 1, 3)\n\
             float_bound := numbers.range(1, 2.5)\n\
             integral_float := numbers.range(1, 3.0)\n\
             iterated := [x | some x in numbers.range(1, 4); x % 2 == 0]\n",
        )
        .unwrap();
        let get = |rule: &str| policies.query(&["r", rule], None).unwrap();
        assert_eq!(get("up"), Some(json!([1, 2, 3])));
        assert_eq!(get("down"), Some(json!([3, 2, 1])));
        assert_eq!(get("one"), Some(json!([5])));
        assert_eq!(get("negative"), Some(json!([-2, -1, 0])));
        assert_eq!(get("stepped"), Some(json!([1, 4, 7, 10])));
        assert_eq!(get("stepped_down"), Some(json!([10, 7, 4, 1])));
        assert_eq!(get("float_bound"), None);
        assert_eq!(get("integral_float"), Some(json!([1, 2, 3])));
        assert_eq!(get("iterated"), Some(json!([2, 4])));
        let error = policies.query(&["r", "nope"], None);
        assert_eq!(error, Ok(None));
        let not_number = one("n.rego", "package n\nx := numbers.range(\"a\", 2)\n").unwrap();
        let error = not_number.query(&["n", "x"], None).unwrap_err().to_string();
        assert!(error.contains("operands must be numbers"), "{error}");
    }

    #[test]
    fn a_query_that_runs_too_long_is_stopped() {
        let slow = RegoPolicies::compile(
            [(
                "slow.rego".to_owned(),
                "package slow\npairs := count([x | some i in numbers.range(1, 5000); some j in numbers.range(1, 5000); x := i * j])\n".to_owned(),
            )]
            .into(),
            serde_json::Value::Null,
            Duration::from_millis(50),
        )
        .unwrap();
        let error = slow.query(&["slow", "pairs"], None).unwrap_err();
        assert!(error.to_string().to_lowercase().contains("time"), "{error}");
    }
}
