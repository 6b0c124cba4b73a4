//! The IAM policy a Lambda authorizer returns, evaluated as API Gateway evaluates it for the
//! route being called:
//!
//! - A statement applies when one of its `Action`s matches `execute-api:Invoke` and one of its
//!   `Resource`s matches the route's ARN, `arn:aws:execute-api:{region}:{account}:{api}/{stage}/{route}`
//!   ("Control access to WebSocket APIs with IAM authorization",
//!   <https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-websocket-control-access-iam.html>).
//!   Both may hold the wildcards `*` (any run of characters, `/` and `:` included) and `?` (one
//!   character) ("IAM JSON policy elements: Resource", IAM user guide); actions compare
//!   case-insensitively, resources case-sensitively.
//! - An explicit `Deny` that applies wins over any `Allow`; with no `Allow` that applies, the
//!   request is denied ("Policy evaluation logic", IAM user guide,
//!   <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html>).
//!   API Gateway answers a denied `$connect` with 403.
//! - A `Condition` is not evaluated here: a conditional `Allow` does not allow and a
//!   conditional `Deny` denies, the safe reading for code that will meet the real evaluation on
//!   AWS.

use aws_lambda_events::apigw::ApiGatewayCustomAuthorizerPolicy;
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};

/// The action API Gateway checks for a call to a route.
pub const INVOKE: &str = "execute-api:Invoke";

/// Whether the policy lets its principal call `resource` (a route's ARN).
pub fn allows(policy: &ApiGatewayCustomAuthorizerPolicy, resource: &str) -> bool {
    let applies = |statement: &&IamPolicyStatement| {
        statement
            .action
            .iter()
            .any(|action| glob(&action.to_ascii_lowercase(), &INVOKE.to_ascii_lowercase()))
            && statement.resource.iter().any(|r| glob(r, resource))
    };
    let denied = policy
        .statement
        .iter()
        .filter(applies)
        .any(|s| s.effect == IamPolicyEffect::Deny);
    let allowed = policy
        .statement
        .iter()
        .filter(applies)
        .any(|s| s.effect == IamPolicyEffect::Allow && s.condition.is_none());
    !denied && allowed
}

/// `*` matches any run of characters, `?` any one; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    // The classic linear matcher: on a mismatch, go back to the last `*` and let it take one
    // more character.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CONNECT: &str = "arn:aws:execute-api:us-east-1:000000000000:local/dev/$connect";

    fn policy(statements: serde_json::Value) -> ApiGatewayCustomAuthorizerPolicy {
        serde_json::from_value(json!({ "Version": "2012-10-17", "Statement": statements }))
            .expect("a policy document")
    }

    fn statement(effect: &str, resource: &str) -> serde_json::Value {
        json!({ "Action": "execute-api:Invoke", "Effect": effect, "Resource": resource })
    }

    #[test]
    fn wildcard_resources_allow() {
        for resource in [
            CONNECT,
            "*",
            "arn:aws:execute-api:*",
            "arn:aws:execute-api:*:*:*/*/$connect",
            "arn:aws:execute-api:us-east-1:000000000000:local/*",
            "arn:aws:execute-api:us-east-1:000000000000:local/dev/*",
            "arn:aws:execute-api:us-east-1:000000000000:local/de?/$connect",
        ] {
            assert!(
                allows(&policy(json!([statement("Allow", resource)])), CONNECT),
                "{resource}"
            );
        }
    }

    #[test]
    fn a_resource_that_does_not_match_does_not_allow() {
        for resource in [
            "arn:aws:execute-api:us-east-1:000000000000:local/prod/$connect",
            "arn:aws:execute-api:*:*:*/*/$disconnect",
            "arn:aws:execute-api:eu-west-1:*",
            "arn:aws:execute-api:us-east-1:000000000000:local/dev/$CONNECT",
        ] {
            assert!(
                !allows(&policy(json!([statement("Allow", resource)])), CONNECT),
                "{resource}"
            );
        }
    }

    #[test]
    fn an_explicit_deny_wins_over_any_allow() {
        let both = policy(json!([
            statement("Allow", "*"),
            statement("Deny", "arn:aws:execute-api:*:*:*/dev/*"),
        ]));
        assert!(!allows(&both, CONNECT));
        let other_stage_denied = policy(json!([
            statement("Allow", "*"),
            statement("Deny", "arn:aws:execute-api:*:*:*/prod/*"),
        ]));
        assert!(allows(&other_stage_denied, CONNECT));
    }

    #[test]
    fn no_allow_denies() {
        assert!(!allows(&policy(json!([])), CONNECT));
        assert!(!allows(&policy(json!([statement("Deny", "*")])), CONNECT));
    }

    #[test]
    fn the_action_must_be_invoke() {
        let with = |action: serde_json::Value| {
            policy(json!([{ "Action": action, "Effect": "Allow", "Resource": CONNECT }]))
        };
        assert!(allows(&with(json!("execute-api:*")), CONNECT));
        assert!(allows(&with(json!("*")), CONNECT));
        assert!(allows(
            &with(json!(["s3:GetObject", "Execute-API:invoke"])),
            CONNECT
        ));
        assert!(!allows(
            &with(json!("execute-api:ManageConnections")),
            CONNECT
        ));
    }

    #[test]
    fn a_condition_is_not_evaluated_and_so_does_not_allow() {
        let conditional = policy(json!([{
            "Action": "execute-api:Invoke", "Effect": "Allow", "Resource": "*",
            "Condition": { "IpAddress": { "aws:SourceIp": ["10.0.0.0/8"] } },
        }]));
        assert!(!allows(&conditional, CONNECT));
    }

    #[test]
    fn glob_matches_like_iam() {
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a*", "a"));
        assert!(glob("*b*", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(!glob("abc", "abcd"));
        assert!(glob("**", ""));
    }
}
