//! Request parameters of a form or query string, as RFC 6749 §3.1 and §3.2
//! require them: each at most once (a repeated parameter is ambiguous, and
//! two parsers that keep the first and the last would disagree), empty ones
//! treated as absent.

use std::collections::HashMap;

use crate::OAuthError;

/// Most parameters in one request.
const MAX_PARAMS: usize = 64;

/// The parameters of one request.
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// From decoded pairs; a repeated name is an `invalid_request`.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, OAuthError> {
        if pairs.len() > MAX_PARAMS {
            return Err(OAuthError::invalid_request(format!(
                "more than {MAX_PARAMS} parameters"
            )));
        }
        let mut map = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if value.is_empty() {
                continue;
            }
            if map.contains_key(&name) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {name:?} is given more than once"
                )));
            }
            map.insert(name, value);
        }
        Ok(Self(map))
    }

    /// A parameter's value, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A parameter that must be given.
    pub fn required(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("parameter {name:?} is missing")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_parameter_is_refused_and_empty_ones_are_absent() {
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        let err = Params::from_pairs(vec![pair("code", "a"), pair("code", "b")]).unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert!(err.description().contains("\"code\""), "{}", err.description());
        let params = Params::from_pairs(vec![pair("state", ""), pair("code", "a")]).unwrap();
        assert_eq!(params.get("state"), None);
        assert_eq!(params.required("code").unwrap(), "a");
        assert!(params.required("state").is_err());
    }
}
