//! `template.yaml` (AWS SAM), read as YAML: least privilege (no `Resource: "*"`, no wildcard
//! action, a role of its own per function), the runtime and architecture, every route with its
//! route response, the tables as the stores use them. cfn-lint and `sam validate --lint` check the
//! rest in CI; they miss a wrong `Runtime` on a serverless function and a misspelt
//! `ProtocolType`, which are checked here.

use std::collections::{BTreeMap, BTreeSet};

use chat_aws::tables::{
    CONNECTION_KEY, ROOM_KEY, SEQ_ATTRIBUTE, SEQ_INDEX, SORT_KEY, TTL_ATTRIBUTE,
};
use serde_norway::Value;

fn template() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
    let text = std::fs::read_to_string(path).expect("template.yaml at the workspace root");
    serde_norway::from_str(&text).expect("template.yaml is YAML")
}

/// The resources of one type, by logical id.
fn resources<'a>(template: &'a Value, kind: &str) -> BTreeMap<String, &'a Value> {
    template["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, resource)| resource["Type"].as_str() == Some(kind))
        .map(|(id, resource)| (id.as_str().unwrap().to_owned(), resource))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items.iter().flat_map(strings).collect(),
        // !Ref, !GetAtt, !Sub: the text they hold (a logical id or a pattern).
        Value::Tagged(tagged) => strings(&tagged.value),
        _ => Vec::new(),
    }
}

/// The logical id an intrinsic (`!Ref X`, `!GetAtt X.Arn`) points at.
fn target(value: &Value) -> String {
    let Value::Tagged(tagged) = value else {
        panic!("not an intrinsic: {value:?}")
    };
    let text = tagged.value.as_str().expect("a plain !Ref or !GetAtt");
    text.split('.').next().unwrap().to_owned()
}

/// Every `Statement` anywhere in the template.
fn statements(value: &Value, found: &mut Vec<Value>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                if key.as_str() == Some("Statement") {
                    found.extend(
                        child
                            .as_sequence()
                            .expect("a list of statements")
                            .iter()
                            .cloned(),
                    );
                } else {
                    statements(child, found);
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|item| statements(item, found)),
        Value::Tagged(tagged) => statements(&tagged.value, found),
        _ => {}
    }
}

#[test]
fn no_policy_allows_every_resource_or_a_wildcard_action() {
    let template = template();
    let mut found = Vec::new();
    statements(&template, &mut found);
    let permissions: Vec<&Value> = found
        .iter()
        .filter(|s| s.get("Principal").is_none())
        .collect();
    assert!(permissions.len() >= 9, "every role's statements were found");
    for statement in permissions {
        assert_eq!(statement["Effect"].as_str(), Some("Allow"), "{statement:?}");
        let resources = strings(&statement["Resource"]);
        assert!(!resources.is_empty(), "a Resource: {statement:?}");
        assert!(
            !resources.iter().any(|r| r == "*"),
            "Resource \"*\": {statement:?}"
        );
        assert!(statement.get("NotResource").is_none() && statement.get("NotAction").is_none());
        for action in strings(&statement["Action"]) {
            assert!(!action.contains('*'), "wildcard action {action}");
            let (service, name) = action.split_once(':').expect("service:Action");
            assert!(
                ["dynamodb", "execute-api", "logs", "sqs"].contains(&service),
                "{action}"
            );
            assert!(!name.is_empty());
        }
        // The management API only for posting to connections of this API's stage.
        if strings(&statement["Action"]).contains(&"execute-api:ManageConnections".to_owned()) {
            assert!(resources[0].ends_with("${WebSocketApi}/${StageName}/POST/@connections/*"));
        }
    }
}

#[test]
fn each_function_has_its_own_role_and_no_managed_policy() {
    let template = template();
    let roles = resources(&template, "AWS::IAM::Role");
    let functions = resources(&template, "AWS::Serverless::Function");
    assert_eq!(functions.len(), 6);
    let mut used = BTreeSet::new();
    for (id, function) in &functions {
        let properties = &function["Properties"];
        // With `Policies` (or no `Role`), SAM would attach AWSLambdaBasicExecutionRole, whose
        // resource is "*".
        assert!(properties.get("Policies").is_none(), "{id}");
        let role = target(&properties["Role"]);
        assert!(roles.contains_key(&role), "{id}: {role}");
        assert!(used.insert(role), "{id} shares its role");
        assert!(
            roles
                .values()
                .all(|r| r["Properties"].get("ManagedPolicyArns").is_none())
        );
    }
    // The connect function notifies no one.
    let connect_role = strings(&roles["ConnectRole"]["Properties"]["Policies"]);
    let mut connect_statements = Vec::new();
    statements(roles["ConnectRole"], &mut connect_statements);
    assert!(connect_role.iter().all(|s| !s.contains("execute-api")));
    assert!(
        connect_statements
            .iter()
            .flat_map(|s| strings(&s["Action"]))
            .all(|a| !a.starts_with("execute-api") && a != "dynamodb:Query")
    );
    // The authorizer may only write its logs.
    let mut authorizer_statements = Vec::new();
    statements(
        &roles["AuthorizerRole"]["Properties"]["Policies"],
        &mut authorizer_statements,
    );
    let actions: BTreeSet<String> = authorizer_statements
        .iter()
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    assert_eq!(
        actions,
        ["logs:CreateLogStream", "logs:PutLogEvents"]
            .map(String::from)
            .into()
    );
}

#[test]
fn functions_run_on_provided_al2023_arm64_built_by_cargo_lambda() {
    let template = template();
    let globals = &template["Globals"]["Function"];
    let bins: BTreeSet<String> = resources(&template, "AWS::Serverless::Function")
        .values()
        .map(|function| {
            let property = |name: &str| {
                function["Properties"]
                    .get(name)
                    .unwrap_or(&globals[name])
                    .clone()
            };
            assert_eq!(property("Runtime").as_str(), Some("provided.al2023"));
            assert_eq!(strings(&property("Architectures")), ["arm64"]);
            assert_eq!(property("Handler").as_str(), Some("bootstrap"));
            assert_eq!(property("CodeUri").as_str(), Some("crates/chat-lambda"));
            assert_eq!(
                function["Metadata"]["BuildMethod"].as_str(),
                Some("rust-cargolambda")
            );
            function["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // The binaries of this crate.
    let expected: BTreeSet<String> = [
        "api",
        "authorizer",
        "connect",
        "disconnect",
        "fanout",
        "message",
    ]
    .map(String::from)
    .into();
    assert_eq!(bins, expected);
    for bin in &bins {
        let main = format!("{}/src/bin/{bin}.rs", env!("CARGO_MANIFEST_DIR"));
        assert!(std::path::Path::new(&main).exists(), "{main}");
    }
    // Every variable the functions read is set (or deliberately left to its default).
    let variables = globals["Environment"]["Variables"].as_mapping().unwrap();
    for name in chat_lambda::config::DEPLOYED_VARIABLES {
        assert!(variables.contains_key(name), "{name} is not set in Globals");
    }
    let functions = resources(&template, "AWS::Serverless::Function");
    let authorizer = functions["AuthorizerFunction"]["Properties"]["Environment"]["Variables"]
        .as_mapping()
        .unwrap();
    for name in chat_lambda::authorizer::VARIABLES {
        assert_eq!(
            authorizer.contains_key(name),
            name != "JWKS_CACHE_SECONDS",
            "{name} on the authorizer"
        );
    }
}

/// With authentication on (a JWKS URL or a secret), `$connect` goes through the REQUEST
/// authorizer on `?token=`; without, nothing of it is deployed.
#[test]
fn authentication_is_a_request_authorizer_on_connect_when_configured() {
    let template = template();
    let condition = &template["Conditions"]["AuthOn"];
    let on_when = strings(condition).concat();
    assert!(
        on_when.contains("JwksUrl") && on_when.contains("JwtSecret"),
        "{on_when}"
    );
    for id in [
        "AuthorizerFunction",
        "AuthorizerRole",
        "AuthorizerLogGroup",
        "ConnectAuthorizer",
        "AuthorizerPermission",
    ] {
        assert_eq!(
            template["Resources"][id]["Condition"].as_str(),
            Some("AuthOn"),
            "{id}"
        );
    }
    let authorizers = resources(&template, "AWS::ApiGatewayV2::Authorizer");
    let authorizer = &authorizers["ConnectAuthorizer"]["Properties"];
    assert_eq!(authorizer["AuthorizerType"].as_str(), Some("REQUEST"));
    assert_eq!(
        strings(&authorizer["IdentitySource"]),
        ["route.request.querystring.token"]
    );
    assert!(
        strings(&authorizer["AuthorizerUri"])
            .concat()
            .contains("${AuthorizerFunction.Arn}")
    );

    let routes = resources(&template, "AWS::ApiGatewayV2::Route");
    for (id, route) in &routes {
        let properties = &route["Properties"];
        if properties["RouteKey"].as_str() == Some("$connect") {
            assert_eq!(
                strings(&properties["AuthorizationType"]),
                ["AuthOn", "CUSTOM", "NONE"],
                "{id}"
            );
            assert_eq!(
                strings(&properties["AuthorizerId"]),
                ["AuthOn", "ConnectAuthorizer", "AWS::NoValue"],
                "{id}"
            );
        } else {
            // API Gateway allows an authorizer on $connect only.
            assert!(properties.get("AuthorizerId").is_none(), "{id}");
        }
    }
    // The secret is never echoed.
    assert_eq!(
        template["Parameters"]["JwtSecret"]["NoEcho"].as_bool(),
        Some(true)
    );
}

#[test]
fn the_api_routes_on_action_with_every_route_and_route_responses() {
    let template = template();
    let apis = resources(&template, "AWS::ApiGatewayV2::Api");
    let api = &apis["WebSocketApi"]["Properties"];
    assert_eq!(api["ProtocolType"].as_str(), Some("WEBSOCKET"));
    assert_eq!(
        api["RouteSelectionExpression"].as_str(),
        Some("$request.body.action")
    );

    // The WebSocket API's routes (the server API's are the next test's).
    let mut routes = resources(&template, "AWS::ApiGatewayV2::Route");
    routes.retain(|_, route| target(&route["Properties"]["ApiId"]) == "WebSocketApi");
    let keys: BTreeSet<&str> = routes
        .values()
        .map(|route| route["Properties"]["RouteKey"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = ["$connect", "$disconnect", "$default"]
        .into_iter()
        .chain(
            chat_core::protocol::ActionName::ALL
                .iter()
                .map(|a| a.as_str()),
        )
        .collect();
    assert_eq!(keys, expected);

    let responded: BTreeSet<String> = resources(&template, "AWS::ApiGatewayV2::RouteResponse")
        .values()
        .map(|response| {
            assert_eq!(
                response["Properties"]["RouteResponseKey"].as_str(),
                Some("$default")
            );
            target(&response["Properties"]["RouteId"])
        })
        .collect();
    let deployment = resources(&template, "AWS::ApiGatewayV2::Deployment");
    let depends: Vec<String> = strings(&deployment.values().next().unwrap()["DependsOn"]);
    for (id, route) in &routes {
        let key = route["Properties"]["RouteKey"].as_str().unwrap();
        assert!(depends.contains(id), "the deployment waits for {id}");
        let replies = !matches!(key, "$connect" | "$disconnect");
        assert_eq!(responded.contains(id), replies, "route response of {key}");
        if replies {
            assert_eq!(
                route["Properties"]["RouteResponseSelectionExpression"].as_str(),
                Some("$default"),
                "{key}"
            );
        }
    }

    // Each route may invoke its function, and only from this API and stage.
    let permissions = resources(&template, "AWS::Lambda::Permission");
    let mut allowed = BTreeSet::new();
    for permission in permissions.values() {
        let properties = &permission["Properties"];
        assert_eq!(
            properties["Principal"].as_str(),
            Some("apigateway.amazonaws.com")
        );
        let source = strings(&properties["SourceArn"]).concat();
        if target(&properties["FunctionName"]) == "ApiFunction" {
            continue;
        }
        if target(&properties["FunctionName"]) == "AuthorizerFunction" {
            // The authorizer, for this API's own authorizer only.
            assert_eq!(
                source,
                "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}/authorizers/${ConnectAuthorizer}"
            );
            continue;
        }
        let route = source
            .strip_prefix("arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}/${StageName}/")
            .unwrap_or_else(|| panic!("SourceArn of one route of this API and stage: {source}"));
        allowed.insert(route.to_owned());
    }
    let expected: BTreeSet<String> = expected.into_iter().map(String::from).collect();
    assert_eq!(allowed, expected);
}

#[test]
fn the_tables_are_keyed_as_the_stores_use_them_on_demand_with_ttl_pitr_and_sse() {
    let template = template();
    let tables = resources(&template, "AWS::DynamoDB::Table");
    let key_schema = |id: &str| -> Vec<(String, String)> {
        tables[id]["Properties"]["KeySchema"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["AttributeName"].as_str().unwrap().to_owned(),
                    k["KeyType"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        key_schema("ConnectionsTable"),
        [(CONNECTION_KEY.into(), "HASH".into())]
    );
    assert_eq!(
        key_schema("MessagesTable"),
        [
            (ROOM_KEY.into(), "HASH".into()),
            (SORT_KEY.into(), "RANGE".into())
        ]
    );
    // The index of messages by seq, as the store queries it, with every attribute.
    let index = &tables["MessagesTable"]["Properties"]["LocalSecondaryIndexes"][0];
    assert_eq!(index["IndexName"].as_str(), Some(SEQ_INDEX));
    assert_eq!(
        index["KeySchema"][0]["AttributeName"].as_str(),
        Some(ROOM_KEY)
    );
    assert_eq!(
        index["KeySchema"][1]["AttributeName"].as_str(),
        Some(SEQ_ATTRIBUTE)
    );
    assert_eq!(index["KeySchema"][1]["KeyType"].as_str(), Some("RANGE"));
    assert_eq!(index["Projection"]["ProjectionType"].as_str(), Some("ALL"));
    let seq_type = tables["MessagesTable"]["Properties"]["AttributeDefinitions"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|d| d["AttributeName"].as_str() == Some(SEQ_ATTRIBUTE))
        .and_then(|d| d["AttributeType"].as_str());
    assert_eq!(seq_type, Some("N"));
    for (id, table) in &tables {
        let properties = &table["Properties"];
        assert_eq!(
            properties["BillingMode"].as_str(),
            Some("PAY_PER_REQUEST"),
            "{id}"
        );
        assert_eq!(
            properties["TimeToLiveSpecification"]["AttributeName"].as_str(),
            Some(TTL_ATTRIBUTE)
        );
        assert_eq!(
            properties["TimeToLiveSpecification"]["Enabled"].as_bool(),
            Some(true)
        );
        assert_eq!(
            properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"].as_bool(),
            Some(true)
        );
        assert_eq!(
            properties["SSESpecification"]["SSEEnabled"].as_bool(),
            Some(true)
        );
    }
}

#[test]
fn the_outputs_give_the_wss_url_and_the_management_endpoint() {
    let template = template();
    let url = strings(&template["Outputs"]["WebSocketUrl"]["Value"]).concat();
    assert!(
        url.starts_with("wss://${WebSocketApi}.execute-api."),
        "{url}"
    );
    let endpoint = strings(&template["Outputs"]["ManagementEndpoint"]["Value"]).concat();
    assert!(
        endpoint.starts_with("https://${WebSocketApi}.execute-api."),
        "{endpoint}"
    );
}

#[test]
fn env_example_lists_every_variable() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.env.example");
    let example = std::fs::read_to_string(path).expect(".env.example at the workspace root");
    let listed: BTreeSet<&str> = example
        .lines()
        .map(|line| line.trim_start_matches('#').trim())
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.trim()))
        .collect();
    for name in chat_lambda::config::VARIABLES
        .into_iter()
        .chain(chat_lambda::authorizer::VARIABLES)
    {
        assert!(listed.contains(name), "{name} is missing from .env.example");
    }
}

/// The server API is an HTTP API in front of the api function, whose every route needs a SigV4
/// signature, and which only that API's `/api/` routes may invoke.
#[test]
fn the_server_api_is_an_iam_authorized_http_api_in_front_of_the_api_function() {
    let template = template();
    let apis = resources(&template, "AWS::ApiGatewayV2::Api");
    assert_eq!(
        apis["ServerApi"]["Properties"]["ProtocolType"].as_str(),
        Some("HTTP")
    );
    let routes = resources(&template, "AWS::ApiGatewayV2::Route");
    let server_routes: Vec<_> = routes
        .values()
        .filter(|route| target(&route["Properties"]["ApiId"]) == "ServerApi")
        .collect();
    assert_eq!(server_routes.len(), 1);
    for route in server_routes {
        let properties = &route["Properties"];
        assert_eq!(properties["RouteKey"].as_str(), Some("ANY /api/{proxy+}"));
        assert_eq!(properties["AuthorizationType"].as_str(), Some("AWS_IAM"));
    }
    let integration =
        &resources(&template, "AWS::ApiGatewayV2::Integration")["ServerApiIntegration"];
    assert_eq!(
        integration["Properties"]["PayloadFormatVersion"].as_str(),
        Some("2.0")
    );
    assert!(
        strings(&integration["Properties"]["IntegrationUri"])
            .concat()
            .contains("ApiFunction")
    );
    let permission = &resources(&template, "AWS::Lambda::Permission")["ApiPermission"];
    let source = strings(&permission["Properties"]["SourceArn"]).concat();
    assert!(source.contains("${ServerApi}/$default/*/api/*"), "{source}");
    // Its events name the HTTP API: the WebSocket API's endpoint is configured.
    let function = &resources(&template, "AWS::Serverless::Function")["ApiFunction"];
    let endpoint =
        strings(&function["Properties"]["Environment"]["Variables"]["APIGW_MANAGEMENT_ENDPOINT"])
            .concat();
    assert!(
        endpoint.contains("https://${WebSocketApi}.execute-api."),
        "{endpoint}"
    );
    let url = strings(&template["Outputs"]["ServerApiUrl"]["Value"]).concat();
    assert!(
        url.starts_with("https://${ServerApi}.execute-api."),
        "{url}"
    );
}

/// The actions a role's policies allow on one resource (a logical id, `!GetAtt X.Arn`).
fn actions_on(role: &Value, resource: &str) -> BTreeSet<String> {
    let mut found = Vec::new();
    statements(&role["Properties"]["Policies"], &mut found);
    found
        .iter()
        .filter(|statement| {
            let resources = &statement["Resource"];
            matches!(resources, Value::Tagged(_)) && target(resources) == resource
        })
        .flat_map(|statement| strings(&statement["Action"]))
        .collect()
}

/// Large rooms' events go through an encrypted FIFO queue, which only the functions that post to
/// rooms may send to and only the fanout function may read; its failures go to a dead-letter
/// queue after a few tries, which raises an alarm; Lambda reads it in FIFO batches with partial
/// batch failures, and a message being posted is not received again meanwhile.
#[test]
fn large_rooms_fan_out_through_an_encrypted_fifo_queue_with_a_dead_letter_queue_and_an_alarm() {
    let template = template();
    let queues = resources(&template, "AWS::SQS::Queue");
    assert_eq!(
        queues.keys().collect::<Vec<_>>(),
        ["FanoutDeadLetterQueue", "FanoutQueue"]
    );
    for (id, queue) in &queues {
        let properties = &queue["Properties"];
        assert_eq!(properties["FifoQueue"].as_bool(), Some(true), "{id}");
        assert_eq!(
            properties["SqsManagedSseEnabled"].as_bool(),
            Some(true),
            "{id}"
        );
    }
    let queue = &queues["FanoutQueue"]["Properties"];
    let redrive = &queue["RedrivePolicy"];
    assert_eq!(
        target(&redrive["deadLetterTargetArn"]),
        "FanoutDeadLetterQueue"
    );
    let tries = redrive["maxReceiveCount"].as_u64().unwrap();
    assert!((2..=10).contains(&tries), "maxReceiveCount {tries}");
    // Dead letters are kept longer than the queue keeps messages, so that none expires unseen.
    let kept = |queue: &Value| {
        queue["Properties"]["MessageRetentionPeriod"]
            .as_u64()
            .unwrap()
    };
    assert!(kept(queues["FanoutDeadLetterQueue"]) > kept(queues["FanoutQueue"]));

    let alarms = resources(&template, "AWS::CloudWatch::Alarm");
    let alarm = &alarms["FanoutDeadLetterAlarm"]["Properties"];
    assert_eq!(alarm["Namespace"].as_str(), Some("AWS/SQS"));
    assert_eq!(
        alarm["MetricName"].as_str(),
        Some("ApproximateNumberOfMessagesVisible")
    );
    assert_eq!(
        target(&alarm["Dimensions"][0]["Value"]),
        "FanoutDeadLetterQueue"
    );
    assert_eq!(alarm["Threshold"].as_u64(), Some(0));
    assert_eq!(
        alarm["ComparisonOperator"].as_str(),
        Some("GreaterThanThreshold")
    );

    let functions = resources(&template, "AWS::Serverless::Function");
    let fanout = &functions["FanoutFunction"]["Properties"];
    let events = fanout["Events"].as_mapping().unwrap();
    assert_eq!(events.len(), 1);
    let (_, event) = events.iter().next().unwrap();
    assert_eq!(event["Type"].as_str(), Some("SQS"));
    assert_eq!(target(&event["Properties"]["Queue"]), "FanoutQueue");
    let batch = event["Properties"]["BatchSize"].as_u64().unwrap();
    assert!(
        (1..=10).contains(&batch),
        "a FIFO queue's batch is at most 10: {batch}"
    );
    assert_eq!(
        strings(&event["Properties"]["FunctionResponseTypes"]),
        ["ReportBatchItemFailures"]
    );
    // "Set the source queue's visibility timeout to at least six times the timeout that you
    // configure on your function" (Lambda Developer Guide, "Using Lambda with Amazon SQS").
    let timeout = fanout["Timeout"].as_u64().unwrap();
    assert!(queue["VisibilityTimeout"].as_u64().unwrap() >= 6 * timeout);
    // Posting is CPU-bound (docs/bench/FANOUT.md): at the Globals' 256 MB (about 0.15 vCPU) a
    // shard of a room of 100,000 would take about 4 times as long as at 1,024 MB, for about the
    // same GB-seconds.
    let memory = fanout["MemorySize"].as_u64().unwrap_or(0);
    assert!(memory >= 1024, "the fanout function has {memory} MB");

    let roles = resources(&template, "AWS::IAM::Role");
    let poller: BTreeSet<String> = [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:ChangeMessageVisibility",
    ]
    .map(String::from)
    .into();
    assert_eq!(actions_on(roles["FanoutRole"], "FanoutQueue"), poller);
    let send: BTreeSet<String> = ["sqs:SendMessage".to_owned()].into();
    for role in ["MessageRole", "DisconnectRole", "ApiRole"] {
        assert_eq!(actions_on(roles[role], "FanoutQueue"), send, "{role}");
    }
    for role in ["ConnectRole", "AuthorizerRole", "FanoutRole"] {
        let mut found = Vec::new();
        statements(&roles[role]["Properties"]["Policies"], &mut found);
        assert!(
            found
                .iter()
                .flat_map(|s| strings(&s["Action"]))
                .all(|action| action != "sqs:SendMessage"),
            "{role} sends to the queue"
        );
    }
    // No one touches the dead-letter queue but SQS (and the operator who redrives it).
    let mut every = Vec::new();
    statements(&template["Resources"], &mut every);
    assert!(every.iter().all(|statement| {
        strings(&statement["Resource"])
            .iter()
            .all(|r| !r.starts_with("FanoutDeadLetterQueue"))
    }));
}
