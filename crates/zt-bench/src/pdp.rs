//! Rego decisions in process: the seed's policy (`examples/rego/allow.rego`).

use std::hint::black_box;

use crate::{Error, Figure, measure};

/// Times `iterations` decisions of the seed's policy, allowed then denied (a
/// clone of the prepared engine per decision, as the API does); reports a
/// [`Figure::Calls`] for each. Fails if the policy does not decide as expected.
pub fn run(iterations: usize, mut report: impl FnMut(Figure)) -> Result<(), Error> {
    let text = include_str!("../../../examples/rego/allow.rego");
    let policies = zt_policy::rego::RegoPolicies::compile(
        [("allow.rego".to_owned(), text.to_owned())].into(),
        serde_json::Value::Null,
        zt_policy::rego::DEFAULT_EVAL_LIMIT,
    )
    .map_err(Error::Rego)?;
    let input = |principal: &str| serde_json::json!({"principal": principal, "method": "POST", "path": "/api/v1/charges"});
    let allowed = input("spiffe://cluster.local/ns/production/sa/payment-service");
    let denied = input("spiffe://cluster.local/ns/production/sa/orders");
    for (want, input) in [(true, &allowed), (false, &denied)] {
        let got = policies.query(&["authz", "allow"], Some(input))?;
        if got != Some(serde_json::Value::Bool(want)) {
            return Err(Error::Failed(format!("expected {want}, got {got:?}")));
        }
    }
    for (name, input) in [("allowed", &allowed), ("denied", &denied)] {
        let samples = measure(iterations.max(1), || {
            black_box(
                policies
                    .query(black_box(&["authz", "allow"]), Some(black_box(input)))
                    .is_ok(),
            );
        });
        report(Figure::Calls {
            name: name.to_owned(),
            samples,
        });
    }
    Ok(())
}
