//! The two tables: their names, their keys, and how to create them (local runs; SAM creates them
//! on AWS from `template.yaml`, which must say the same).

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, LocalSecondaryIndex, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};

/// The connections table's key.
pub const CONNECTION_KEY: &str = "connectionId";
/// The messages table's partition key: the room.
pub const ROOM_KEY: &str = "room";
/// The messages table's sort key: a message id, or a member or idempotency key of the room.
pub const SORT_KEY: &str = "sk";
/// A message item's room sequence number (a number), the sort key of [`SEQ_INDEX`].
pub const SEQ_ATTRIBUTE: &str = "seq";
/// The messages table's local secondary index by `seq`: only message items have a `seq`, so it
/// holds the messages alone, in the order they became visible. A local index, because only a
/// local one can be read with strong consistency (a recovery must see every acknowledged
/// message); its cost is DynamoDB's limit of 10 GB per room (partition key) for the table and
/// the index together.
pub const SEQ_INDEX: &str = "bySeq";
/// The expiry attribute of both tables (epoch seconds), enabled as DynamoDB's TTL.
pub const TTL_ATTRIBUTE: &str = "ttl";

/// The names of the two tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    pub connections: String,
    pub messages: String,
}

impl Tables {
    pub const DEFAULT_CONNECTIONS: &'static str = "WebSocketConnections";
    pub const DEFAULT_MESSAGES: &'static str = "ChatMessages";

    pub fn new(connections: impl Into<String>, messages: impl Into<String>) -> Self {
        Self {
            connections: connections.into(),
            messages: messages.into(),
        }
    }
}

impl Default for Tables {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CONNECTIONS, Self::DEFAULT_MESSAGES)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create table {table}: {message}")]
pub struct CreateTableError {
    pub table: String,
    pub message: String,
}

/// Creates the tables that are missing (on demand, with TTL on `ttl`), and waits until they are
/// active. Tables that exist are left as they are.
pub async fn create_tables(client: &Client, tables: &Tables) -> Result<(), CreateTableError> {
    create_table(
        client,
        &tables.connections,
        &[(CONNECTION_KEY, KeyType::Hash)],
        None,
    )
    .await?;
    create_table(
        client,
        &tables.messages,
        &[(ROOM_KEY, KeyType::Hash), (SORT_KEY, KeyType::Range)],
        Some((SEQ_INDEX, SEQ_ATTRIBUTE)),
    )
    .await
}

/// Creates one table with string keys, and a local index (its name, its numeric sort key) that
/// projects every attribute.
async fn create_table(
    client: &Client,
    table: &str,
    keys: &[(&str, KeyType)],
    local_index: Option<(&str, &str)>,
) -> Result<(), CreateTableError> {
    let fail = |e: &dyn std::fmt::Display| CreateTableError {
        table: table.to_owned(),
        message: e.to_string(),
    };
    let exists = match client.describe_table().table_name(table).send().await {
        Ok(_) => true,
        Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => false,
        Err(e) => return Err(fail(&DisplayErrorContext(&e))),
    };
    if !exists {
        let mut create = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest);
        for (name, key_type) in keys {
            let definition = AttributeDefinition::builder()
                .attribute_name(*name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| fail(&e))?;
            let element = KeySchemaElement::builder()
                .attribute_name(*name)
                .key_type(key_type.clone())
                .build()
                .map_err(|e| fail(&e))?;
            create = create.attribute_definitions(definition).key_schema(element);
        }
        if let Some((index, sort_key)) = local_index {
            let key = |name: &str, key_type: KeyType| {
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(key_type)
                    .build()
                    .map_err(|e| fail(&e))
            };
            let definition = AttributeDefinition::builder()
                .attribute_name(sort_key)
                .attribute_type(ScalarAttributeType::N)
                .build()
                .map_err(|e| fail(&e))?;
            let lsi = LocalSecondaryIndex::builder()
                .index_name(index)
                .key_schema(key(keys[0].0, KeyType::Hash)?)
                .key_schema(key(sort_key, KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(|e| fail(&e))?;
            create = create
                .attribute_definitions(definition)
                .local_secondary_indexes(lsi);
        }
        match create.send().await {
            Ok(_) => tracing::info!(table, "table created"),
            // Another process created it in the meantime.
            Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => {}
            Err(e) => return Err(fail(&DisplayErrorContext(&e))),
        }
    }
    wait_until_active(client, table)
        .await
        .map_err(|e| fail(&e))?;
    if !exists {
        let ttl = TimeToLiveSpecification::builder()
            .attribute_name(TTL_ATTRIBUTE)
            .enabled(true)
            .build()
            .map_err(|e| fail(&e))?;
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(ttl)
            .send()
            .await
            .map_err(|e| fail(&DisplayErrorContext(&e)))?;
    }
    Ok(())
}

async fn wait_until_active(client: &Client, table: &str) -> Result<(), String> {
    for _ in 0..120 {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        let status = described.table().and_then(|t| t.table_status());
        if status == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err("the table did not become active within a minute".into())
}
