//! The API Gateway management notifier (`chat-aws`, the one the Lambda functions use) against
//! this gateway's real `@connections` API and real WebSocket clients: the notifier conformance
//! suite of chat-core, run on the local gateway as on AWS.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_config::Region;
use chat_aws::ManagementClients;
use chat_core::domain::ConnectionId;
use chat_core::ports::Notifier;
use chat_core::testing::notifier::{Inbox, NotifierHarness};
use futures_util::StreamExt;
use tokio::sync::Mutex as AsyncMutex;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, TestServer};

/// A running server (embedded back end: what is under test is the gateway and the notifier),
/// and the notifier the Lambda functions would use, posting to its `@connections`.
struct Gateway {
    server: TestServer,
    notifier: Arc<dyn Notifier>,
    /// One test at a time opens connections, so that "the new id" is the one it opened.
    opening: AsyncMutex<()>,
}

impl Gateway {
    async fn start() -> Self {
        // The suite opens a few hundred connections from one address, past its default rate.
        let server = TestServer::start_with(|settings| settings.ip_connect_burst = 1000).await;
        let sdk = chat_aws::sdk::defaults()
            .region(Region::new("us-east-1"))
            .test_credentials()
            .load()
            .await;
        let endpoint = format!("http://{}/{}", server.addr, server.settings.stage);
        let notifier = ManagementClients::new(sdk, 32).notifier(&endpoint);
        Self {
            server,
            notifier,
            opening: AsyncMutex::new(()),
        }
    }

    /// Opens a client; returns its connection id and the client.
    async fn open(&self) -> (ConnectionId, Client) {
        let _one_at_a_time = self.opening.lock().await;
        let before = self.server.connection_ids();
        let client = self.server.client("harness").await;
        let id = self
            .server
            .connection_ids()
            .into_iter()
            .find(|id| !before.contains(id))
            .expect("the new connection is registered");
        (id, client)
    }
}

#[async_trait]
impl NotifierHarness for Gateway {
    fn notifier(&self) -> Arc<dyn Notifier> {
        self.notifier.clone()
    }

    async fn live(&self) -> (ConnectionId, Box<dyn Inbox>) {
        let (id, client) = self.open().await;
        let frames = Arc::new(Mutex::new(Vec::new()));
        let received = frames.clone();
        // Reads the socket in the background for as long as the client is open.
        tokio::spawn(async move {
            let mut ws = client.ws;
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message {
                    received.lock().unwrap().push(text.to_string());
                }
            }
        });
        let inbox = move || frames.lock().unwrap().clone();
        (id, Box::new(inbox))
    }

    async fn gone(&self) -> ConnectionId {
        let (id, client) = self.open().await;
        client.close().await;
        while self.server.connection_ids().contains(&id) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        id
    }
}

chat_core::notifier_conformance!(Gateway::start().await);
