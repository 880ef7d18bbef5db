//! `zt policy`: policies as code — lint a directory, evaluate one request, run
//! table tests in CI.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use zt_policy::{PolicySet, Request};

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::args::{AdminArgs, RegoLimitArgs};
use super::traffic::TrafficArgs;

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Check every policy file in a directory: each problem as file:line: field: what is wrong.
    Lint(PolicyLintArgs),
    /// Decide one request: {"decision":"ALLOW"|"DENY","policy":"<namespace>/<name>"|null,"reason":"…"}.
    Eval(PolicyEvalArgs),
    /// Run table tests (requests and expected decisions) against a directory of policies,
    /// and the test_* rules of its Rego modules.
    Test(PolicyTestArgs),
    /// Lint a directory, show its difference to the version on zt server, and store it
    /// as the next version, which the server pushes to every proxy.
    Apply(PolicyApplyArgs),
    /// Write AuthorizationPolicies (dry-run) that allow what verified callers were seen
    /// doing in decision logs, one file per destination workload, and report what was
    /// left out (plaintext callers, rare requests, denied ones).
    Generate(PolicyGenerateArgs),
    /// Enforce the dry-run policies of a directory whose shadow decisions show no
    /// would-be denial of served traffic (their istio.io/dry-run annotation is removed);
    /// list the would-be denials of the others.
    Promote(PolicyPromoteArgs),
}

#[derive(Args)]
pub(crate) struct PolicyGenerateArgs {
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
    /// The directory to write the policies to (NAMESPACE/APP.yaml; created if missing).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Leave out a path template or TCP port a caller used fewer times than this.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) min_count: u64,
    /// Turn the paths under a prefix into PREFIX/{**} once this many distinct ones were
    /// seen (0: never).
    #[arg(long, default_value_t = zt_observe::paths::Templating::default().collapse_after)]
    pub(crate) collapse_after: usize,
    /// The shortest path segment that counts as a random token (and becomes {*}).
    #[arg(long, default_value_t = zt_observe::paths::Templating::default().token_min_length as u64,
        value_parser = clap::value_parser!(u64).range(8..256))]
    pub(crate) token_min_length: u64,
    /// Write enforcing policies (no istio.io/dry-run annotation).
    #[arg(long)]
    pub(crate) enforce: bool,
}

#[derive(Args)]
pub(crate) struct PolicyPromoteArgs {
    /// The directory of policies (as applied with zt policy apply).
    pub(crate) dir: PathBuf,
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
    /// Served requests a policy must have been evaluated with in shadow before it can be
    /// promoted.
    #[arg(long, default_value_t = 1)]
    pub(crate) min_requests: u64,
    /// The namespace whose policies apply to every workload.
    #[arg(long, default_value = zt_policy::DEFAULT_ROOT_NAMESPACE)]
    pub(crate) root_namespace: String,
    /// Show the verdicts only; change no file.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Args)]
pub(crate) struct PolicyApplyArgs {
    /// The directory of policy files.
    pub(crate) dir: PathBuf,
    /// Show the difference only; apply nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct PolicyLintArgs {
    /// The directory of policy files (*.yaml, *.yml; searched recursively).
    pub(crate) dir: PathBuf,
    /// The namespace whose policies apply to every workload.
    #[arg(long, default_value = zt_policy::DEFAULT_ROOT_NAMESPACE)]
    pub(crate) root_namespace: String,
}

#[derive(Args)]
pub(crate) struct PolicyEvalArgs {
    /// The directory of policy files.
    #[arg(long)]
    pub(crate) policies: PathBuf,
    /// The request, as JSON: inline, @FILE, or - for standard input. Shape:
    /// {"source":{"principal":"spiffe://…","namespace":"…","ip":"…"},"destination":{"namespace":"…","labels":{…},"port":8080},"request":{"method":"GET","path":"/…","host":"…","headers":{…},"auth":{"principal":"…","claims":{…}}},"protocol":"http"|"tcp"}
    #[arg(long)]
    pub(crate) request: String,
    /// The namespace whose policies apply to every workload.
    #[arg(long, default_value = zt_policy::DEFAULT_ROOT_NAMESPACE)]
    pub(crate) root_namespace: String,
}

#[derive(Args)]
pub(crate) struct PolicyTestArgs {
    /// The directory of policy files.
    pub(crate) dir: PathBuf,
    /// The cases: a YAML or JSON list of {name, request, decision, policy?}. Rego
    /// modules' test_* rules in the directory run in any case, like `opa test`.
    #[arg(long)]
    pub(crate) cases: Option<PathBuf>,
    /// The namespace whose policies apply to every workload.
    #[arg(long, default_value = zt_policy::DEFAULT_ROOT_NAMESPACE)]
    pub(crate) root_namespace: String,
    #[command(flatten)]
    pub(crate) rego_limits: RegoLimitArgs,
}

/// The AuthorizationPolicies and RequestAuthentications of `dir`, or every problem.
fn load_with_authn(
    dir: &Path,
    root_namespace: &str,
) -> anyhow::Result<(PolicySet, zt_policy::RequestAuthentications)> {
    let sources = zt_policy::load::read_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let loaded = zt_policy::load::parse_all(&sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((
        PolicySet::new(loaded.policies, root_namespace),
        zt_policy::RequestAuthentications::new(loaded.request_authentications, root_namespace),
    ))
}

/// Authenticates a request's token as zt proxy does (zt-authn's code), by the
/// RequestAuthentications selecting its destination: their inline `jwks`
/// only (a `jwksUri` is not fetched: its rules are left out, with a warning).
fn authenticate_case(
    authn: &zt_policy::RequestAuthentications,
    request: &Request,
    warned: &mut std::collections::BTreeSet<String>,
) -> zt_policy::cases::Authentication {
    use zt_authn::request::{Outcome, Rule};
    use zt_policy::cases::Authentication;
    use zt_policy::request_authentication::JwksSource;

    let Some(http) = &request.request else {
        return Authentication::Unchanged;
    };
    let workload = authn.for_workload(&request.destination.namespace, &request.destination.labels);
    if workload.is_empty() {
        return Authentication::Unchanged;
    }
    let mut rules = Vec::new();
    for (policy, rule) in workload.rules() {
        match &rule.jwks {
            JwksSource::Inline(jwks) => match zt_authn::Keys::inline(jwks) {
                Ok(keys) => rules.push(Rule::new(rule.clone(), keys)),
                Err(e) => return Authentication::Unauthenticated(format!("{}: jwks: {e}", policy.id())),
            },
            JwksSource::Uri(uri) => {
                if warned.insert(format!("{}/{uri}", policy.id())) {
                    eprintln!(
                        "warning: {}:{}: {} rule for {} uses jwksUri {uri}, which zt policy test does not fetch; its tokens are not accepted here (give jwks inline to test them)",
                        policy.origin.file.display(),
                        policy.origin.line,
                        policy.id(),
                        rule.issuer
                    );
                }
            }
        }
    }
    let mut http = http.clone();
    let outcome = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(zt_authn::request::authenticate_http(
            &rules,
            &workload.output_headers(),
            &mut http,
        )),
        Err(e) => return Authentication::Unauthenticated(format!("no runtime: {e}")),
    };
    if let Outcome::Invalid(reason) = outcome {
        return Authentication::Unauthenticated(reason.to_owned());
    }
    let mut changed = request.clone();
    changed.request = Some(http);
    Authentication::Changed(Box::new(changed))
}

/// `zt policy lint DIR`: exit 0 and a summary, or 1 and every problem.
pub fn lint(args: PolicyLintArgs) -> anyhow::Result<ExitCode> {
    let sources = zt_policy::load::read_dir(&args.dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let loaded = zt_policy::load::parse_all(&sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    let by_namespace = |namespaces: &mut dyn Iterator<Item = &str>| {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for namespace in namespaces {
            *counts.entry(namespace).or_default() += 1;
        }
        let counts: Vec<String> = counts.iter().map(|(ns, n)| format!("{ns}: {n}")).collect();
        counts.join(", ")
    };
    let mut summary = format!(
        "{}: {} policies, no problems ({})",
        args.dir.display(),
        loaded.policies.len(),
        by_namespace(&mut loaded.policies.iter().map(|p| p.namespace.as_str()))
    );
    if !loaded.peer_authentications.is_empty() {
        summary.push_str(&format!(
            "; {} PeerAuthentications ({})",
            loaded.peer_authentications.len(),
            by_namespace(&mut loaded.peer_authentications.iter().map(|p| p.namespace.as_str()))
        ));
    }
    if !loaded.request_authentications.is_empty() {
        summary.push_str(&format!(
            "; {} RequestAuthentications ({})",
            loaded.request_authentications.len(),
            by_namespace(
                &mut loaded
                    .request_authentications
                    .iter()
                    .map(|p| p.namespace.as_str())
            )
        ));
    }
    let peer = zt_policy::PeerAuthentications::new(loaded.peer_authentications, &args.root_namespace);
    for ignored in peer.ignored() {
        eprintln!(
            "warning: {}:{}: spec.selector: {} selects workloads in the root namespace {}, where Istio (and zt) ignore workload PeerAuthentications; remove the selector to make it mesh-wide",
            ignored.origin.file.display(),
            ignored.origin.line,
            ignored.id(),
            args.root_namespace
        );
    }
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// `zt policy eval --policies DIR --request JSON`: the decision as JSON.
pub fn eval(args: PolicyEvalArgs) -> anyhow::Result<ExitCode> {
    let (set, authn) = load_with_authn(&args.policies, &args.root_namespace)?;
    let text = match args.request.as_str() {
        "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), super::MAX_INPUT_BYTES),
                &mut text,
            )
            .context("--request -: reading standard input")?;
            text
        }
        inline => match inline.strip_prefix('@') {
            Some(path) => String::from_utf8(super::read_input("--request", Path::new(path))?)
                .with_context(|| format!("--request {inline}: not UTF-8"))?,
            None => inline.to_owned(),
        },
    };
    let request: Request = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--request: {e}"))?;
    let request = match authenticate_case(&authn, &request, &mut Default::default()) {
        zt_policy::cases::Authentication::Unchanged => request,
        zt_policy::cases::Authentication::Changed(request) => *request,
        zt_policy::cases::Authentication::Unauthenticated(reason) => {
            let answer = serde_json::json!({"decision": "UNAUTHENTICATED", "status": 401, "reason": reason});
            println!("{answer}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("{}", serde_json::to_string(&set.evaluate(&request))?);
    Ok(ExitCode::SUCCESS)
}

/// `zt policy test DIR [--cases FILE]`: the cases against the directory's
/// AuthorizationPolicies, and the `test_*` rules of its Rego modules, a line
/// each; exit 1 if any failed.
pub fn test(args: PolicyTestArgs) -> anyhow::Result<ExitCode> {
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut tally = |ok: bool| if ok { passed += 1 } else { failed += 1 };
    if let Some(cases_file) = &args.cases {
        let (set, authn) = load_with_authn(&args.dir, &args.root_namespace)?;
        let text = String::from_utf8(super::read_input("--cases", cases_file)?)
            .with_context(|| format!("--cases {}: not UTF-8", cases_file.display()))?;
        let cases = zt_policy::cases::parse(&text)
            .map_err(|e| anyhow::anyhow!("--cases {}: {e}", cases_file.display()))?;
        let mut warned = std::collections::BTreeSet::new();
        let outcomes = zt_policy::cases::run_with(&set, &cases, |request| {
            authenticate_case(&authn, request, &mut warned)
        });
        for outcome in outcomes {
            match &outcome.failure {
                None => println!("PASS  {}", outcome.name),
                Some(why) => println!("FAIL  {}: {why}", outcome.name),
            }
            tally(outcome.failure.is_none());
        }
    }
    let modules = zt_policy::load::read_files(&args.dir, &["rego"]).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !modules.is_empty() {
        let modules = modules
            .into_iter()
            .map(|m| (m.name.display().to_string(), m.text))
            .collect();
        let rego = zt_policy::rego::RegoPolicies::compile(
            modules,
            serde_json::Value::Null,
            super::pdp::limit(args.rego_limits),
        )
        .map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("{}", lines.join("\n"))
        })?;
        for result in rego.run_tests() {
            match &result.outcome {
                zt_policy::rego::TestOutcome::Pass => println!("PASS  {}", result.name),
                zt_policy::rego::TestOutcome::Fail => println!("FAIL  {} ({})", result.name, result.module),
                zt_policy::rego::TestOutcome::Error(e) => {
                    println!("ERROR {} ({}): {e}", result.name, result.module)
                }
            }
            tally(result.outcome == zt_policy::rego::TestOutcome::Pass);
        }
    }
    if passed + failed == 0 {
        anyhow::bail!(
            "{}: nothing to test (give --cases for AuthorizationPolicies; Rego test_* rules run by themselves)",
            args.dir.display()
        );
    }
    println!("{} tests: {passed} passed, {failed} failed", passed + failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `zt policy apply DIR [--dry-run]`: lint, show the difference to the version
/// in force on zt server, and store the set as the next version.
pub fn apply(args: PolicyApplyArgs) -> anyhow::Result<ExitCode> {
    let sources = zt_policy::load::read_dir(&args.dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    zt_policy::load::parse(&sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    let files: Vec<zt_store::PolicyFile> = sources
        .iter()
        .map(|source| {
            let name = source.name.strip_prefix(&args.dir).unwrap_or(&source.name);
            zt_store::PolicyFile {
                name: name.to_string_lossy().into_owned(),
                text: source.text.clone(),
            }
        })
        .collect();
    let client = zt_server::client::AdminClient::new(&args.admin.socket);
    let current = super::admin_call(client.policies())?;
    let before: Vec<zt_store::PolicyFile> = current.as_ref().map(|v| v.files.clone()).unwrap_or_default();
    let since = current.as_ref().map_or_else(
        || "nothing applied yet".to_owned(),
        |v| format!("version {}", v.version),
    );
    let changes = print_diff(&before, &files);
    if changes == 0 {
        println!("no change from {since}");
        return Ok(ExitCode::SUCCESS);
    }
    if args.dry_run {
        println!("{changes} file(s) differ from {since}; --dry-run: nothing applied");
        return Ok(ExitCode::SUCCESS);
    }
    let applied = super::admin_call(client.apply_policies(&zt_server::api::ApplyPolicies { files }))?;
    println!(
        "applied version {} ({} file(s) changed from {since}), digest {}",
        applied.version, changes, applied.digest
    );
    Ok(ExitCode::SUCCESS)
}

/// `zt policy generate (--log FILE… | --server) --out DIR`: the policies, and
/// what was left out and why.
pub fn generate(args: PolicyGenerateArgs) -> anyhow::Result<ExitCode> {
    let traffic = args.traffic.read()?;
    let options = zt_observe::generate::Options {
        min_count: args.min_count,
        templating: zt_observe::paths::Templating {
            collapse_after: args.collapse_after,
            token_min_length: usize::try_from(args.token_min_length).unwrap_or(usize::MAX),
        },
        dry_run: !args.enforce,
    };
    let generated = zt_observe::generate::generate(&traffic, &options);
    let files: Vec<(PathBuf, Vec<u8>, u32)> = generated
        .files
        .iter()
        .map(|f| (args.out.join(&f.path), f.text.clone().into_bytes(), 0o644))
        .collect();
    for (path, _, _) in &files {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("--out {}", dir.display()))?;
        }
    }
    zt_fs::write_atomically(&files).with_context(|| format!("--out {}", args.out.display()))?;
    // The directory must still lint, and the generated policies alone allow
    // every request they were made from.
    zt_policy::load_dir(&args.out).map_err(|e| {
        anyhow::anyhow!(
            "--out {}: the directory does not lint with the generated files: {e}",
            args.out.display()
        )
    })?;
    zt_observe::generate::check(&generated, &traffic)
        .map_err(|e| anyhow::anyhow!("internal error, please report it: {e}"))?;

    let span = traffic.span_ms().map_or_else(String::new, |(first, last)| {
        format!(
            ", {} to {}",
            zt_observe::generate::rfc3339(first),
            zt_observe::generate::rfc3339(last)
        )
    });
    println!(
        "{} policies ({} rules) written to {} from {} of {} observed requests{span}{}",
        generated.files.len(),
        generated.rules,
        args.out.display(),
        generated.covered,
        traffic.in_window,
        if options.dry_run {
            "; dry-run until promoted"
        } else {
            "; enforcing"
        },
    );
    for file in &generated.files {
        println!("  {}", args.out.join(&file.path).display());
    }
    print_excluded(&generated.excluded, args.min_count);
    println!(
        "next: review them, zt policy apply {} --dry-run, then zt policy apply {}{}",
        args.out.display(),
        args.out.display(),
        if options.dry_run {
            ", and zt policy promote once they have run in shadow"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints what generation left out, by kind.
fn print_excluded(excluded: &zt_observe::generate::Excluded, min_count: u64) {
    use zt_observe::generate::rfc3339;
    let times = |n: u64| {
        if n == 1 {
            "1 request".to_owned()
        } else {
            format!("{n} requests")
        }
    };
    if !excluded.plaintext.is_empty() {
        println!("callers still without mTLS (never allowed: no verified identity; move them to mTLS):");
        for ((destination, address), seen) in &excluded.plaintext {
            println!(
                "  {address} → {destination}: {}, last seen {}",
                times(seen.count),
                rfc3339(seen.last_ms)
            );
        }
    }
    if !excluded.below_min_count.is_empty() {
        println!("seen fewer than --min-count {min_count} times (left out):");
        for ((destination, caller, what), seen) in &excluded.below_min_count {
            println!("  {caller} → {destination}: {what} ({})", times(seen.count));
        }
    }
    if !excluded.denied_by_policy.is_empty() {
        println!("already denied by a DENY policy (left out):");
        for ((destination, caller, policy), seen) in &excluded.denied_by_policy {
            println!(
                "  {caller} → {destination}: denied by {policy} ({})",
                times(seen.count)
            );
        }
    }
    if !excluded.refused.is_empty() {
        println!("refused in enforce mode, never served (left out):");
        for ((destination, caller), seen) in &excluded.refused {
            println!("  {caller} → {destination} ({})", times(seen.count));
        }
    }
    if !excluded.unselectable.is_empty() {
        println!(
            "destinations no selector can pick (no app label, or a name a policy cannot carry; left out):"
        );
        for (destination, seen) in &excluded.unselectable {
            println!(
                "  {destination} ({}): give its proxy --label app=NAME",
                times(seen.count)
            );
        }
    }
    if !excluded.unusable_paths.is_empty() {
        println!("paths a policy cannot match as they are (left out):");
        for ((destination, path, why), seen) in &excluded.unusable_paths {
            println!("  {destination} {path:?}: {why} ({})", times(seen.count));
        }
    }
}

/// `1 served request`, `2 served requests`.
fn served(count: u64) -> String {
    zt_observe::generate::requests(count).replacen(' ', " served ", 1)
}

/// `zt policy promote DIR (--log FILE… | --server)`: each dry-run policy's
/// verdict, and the annotation removed from those that may be enforced.
pub fn promote(args: PolicyPromoteArgs) -> anyhow::Result<ExitCode> {
    let policies = zt_policy::load_dir(&args.dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !policies.iter().any(|p| p.dry_run) {
        println!("{}: no dry-run policy to promote", args.dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let traffic = args.traffic.read()?;
    let reviews = zt_observe::promote::review(&policies, &args.root_namespace, &traffic, args.min_requests);
    // Documents to edit, by file.
    let mut edits: std::collections::BTreeMap<PathBuf, Vec<usize>> = std::collections::BTreeMap::new();
    for (review, policy) in reviews.iter().zip(policies.iter().filter(|p| p.dry_run)) {
        use zt_observe::promote::Verdict;
        let at = format!("{}:{}", policy.origin.file.display(), policy.origin.line);
        match review.verdict {
            Verdict::Promote => {
                println!(
                    "promote  {} ({at}): {} evaluated in shadow, none would have been denied",
                    review.policy,
                    served(review.evidence)
                );
                edits
                    .entry(policy.origin.file.clone())
                    .or_default()
                    .push(policy.origin.line);
            }
            Verdict::WouldDeny => {
                println!(
                    "keep     {} ({at}): would have denied {} of {}, e.g.:",
                    review.policy,
                    review.would_deny,
                    served(review.evidence)
                );
                for (flow, seen) in &review.examples {
                    println!(
                        "           {} ({}×)",
                        zt_observe::promote::describe(flow),
                        seen.count
                    );
                }
            }
            Verdict::TooLittleEvidence => println!(
                "keep     {} ({at}): {} evaluated in shadow, fewer than --min-requests {} \
                 (apply it, let traffic flow, promote again)",
                review.policy,
                served(review.evidence),
                args.min_requests
            ),
            Verdict::NotWeighed => println!(
                "keep     {} ({at}): only ALLOW and DENY policies are weighed",
                review.policy
            ),
        }
    }
    let promoted: usize = edits.values().map(Vec::len).sum();
    if args.dry_run || promoted == 0 {
        println!(
            "{promoted} of {} dry-run policies can be enforced{}",
            reviews.len(),
            if args.dry_run {
                "; --dry-run: no file changed"
            } else {
                ""
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut files = Vec::new();
    for (file, lines) in edits {
        let text = String::from_utf8(super::read_input("", &file)?)
            .with_context(|| format!("{}: not UTF-8", file.display()))?;
        let text = zt_observe::promote::remove_dry_runs(&text, &lines)
            .map_err(|e| anyhow::anyhow!("{}:{e}", file.display()))?;
        let mode = std::fs::metadata(&file)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(0o644);
        files.push((file, text.into_bytes(), mode));
    }
    zt_fs::write_atomically(&files).with_context(|| format!("{}", args.dir.display()))?;
    println!(
        "{promoted} of {} dry-run policies promoted to enforce in {}: review the change, then zt policy apply {}",
        reviews.len(),
        args.dir.display(),
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints what differs between two sets of files, line by line; returns how
/// many files differ.
fn print_diff(before: &[zt_store::PolicyFile], after: &[zt_store::PolicyFile]) -> usize {
    let find = |files: &[zt_store::PolicyFile], name: &str| {
        files.iter().find(|f| f.name == name).map(|f| f.text.clone())
    };
    let mut names: Vec<&str> = before.iter().chain(after).map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut changed = 0;
    for name in names {
        let (old, new) = (find(before, name), find(after, name));
        if old == new {
            continue;
        }
        changed += 1;
        match (&old, &new) {
            (None, Some(_)) => println!("+++ {name} (new)"),
            (Some(_), None) => println!("--- {name} (removed)"),
            _ => println!("*** {name}"),
        }
        for line in line_diff(old.as_deref().unwrap_or(""), new.as_deref().unwrap_or("")) {
            println!("{line}");
        }
    }
    changed
}

/// The removed (`-`) and added (`+`) lines from `old` to `new`, in order (a
/// longest-common-subsequence diff; files are small).
fn line_diff(old: &str, new: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        return vec![format!(
            "  ({} lines → {} lines; too large to diff line by line)",
            a.len(),
            b.len()
        )];
    }
    // lcs[i][j]: the common subsequence length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_shows_removed_and_added_lines() {
        assert_eq!(line_diff("a\nb\nc\n", "a\nB\nc\nd\n"), vec!["- b", "+ B", "+ d"]);
        assert!(line_diff("same\n", "same\n").is_empty());
        assert_eq!(line_diff("", "x\n"), vec!["+ x"]);
    }
}
