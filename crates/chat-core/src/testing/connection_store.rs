//! The [`ConnectionStore`] suite: who is connected and in which rooms, and the send allowance,
//! as every connection store must keep them.
//!
//! Run it with [`connection_store_conformance!`](crate::connection_store_conformance); each test
//! takes a fresh store from a [`ConnectionStoreFactory`]. The concurrency tests race a few tasks
//! on one connection: a store must not let them join more than `max_rooms` rooms or spend more
//! than the allowance (a mutex does it in memory, conditional writes in DynamoDB).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use super::fixtures::{CONNECTED_AT_MS, connect, guest, names, room, user};
use crate::domain::{AccessChange, ConnectionId, Member, RoomName, UserAccess};
use crate::ports::{ConnectionRecord, ConnectionStore, JoinOutcome};
use crate::rate_limit::RateLimit;

/// Makes the store each test runs against.
///
/// Any `Fn() -> impl Future<Output = impl ConnectionStore>` is one; implement it on a type of
/// your own when the store needs something kept alive while it is used.
#[async_trait]
pub trait ConnectionStoreFactory: Send + Sync {
    /// A store that holds no connection (at least in the rooms a test uses: every test may use
    /// any room name).
    async fn fresh(&self) -> Arc<dyn ConnectionStore>;
}

#[async_trait]
impl<F, Fut, S> ConnectionStoreFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = S> + Send,
    S: ConnectionStore + 'static,
{
    async fn fresh(&self) -> Arc<dyn ConnectionStore> {
        Arc::new(self().await)
    }
}

/// A new connection of a guest of this name, in the lobby (as `$connect` leaves it).
async fn connect_to_lobby(store: &dyn ConnectionStore, name: &str) -> ConnectionId {
    let id = connect(store, &guest(name)).await;
    assert_eq!(
        store.join(&id, &RoomName::lobby(), 50).await.unwrap(),
        JoinOutcome::Joined
    );
    id
}

async fn rooms_of(store: &dyn ConnectionStore, id: &ConnectionId) -> Vec<RoomName> {
    store
        .get(id)
        .await
        .unwrap()
        .expect("the connection is stored")
        .rooms
}

pub async fn an_inserted_connection_is_read_back_in_no_room(factory: &dyn ConnectionStoreFactory) {
    let store = factory.fresh().await;
    let ada = user("Ada Lovelace", "user-1");
    let id = connect(&*store, &ada).await;
    let record = store.get(&id).await.unwrap();
    assert_eq!(
        record,
        Some(ConnectionRecord {
            id: id.clone(),
            member: ada,
            connected_at_ms: CONNECTED_AT_MS,
            rooms: Vec::new(),
            grants: Vec::new(),
            allowance: None,
        })
    );
    let bob = connect(&*store, &guest("bob")).await;
    assert_eq!(store.get(&bob).await.unwrap().unwrap().member, guest("bob"));
    assert!(store.get(&ConnectionId::random()).await.unwrap().is_none());
    // Inserting joins no room, not even the lobby (`$connect` does that).
    assert!(
        store
            .room_connections(&RoomName::lobby())
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn a_connection_is_stored_joins_and_leaves_rooms_and_is_removed_with_its_memberships(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    let ada = connect_to_lobby(&*store, "ada").await;
    let bob = connect_to_lobby(&*store, "bob").await;
    let r = room("rust");

    let record = store.get(&ada).await.unwrap().unwrap();
    assert_eq!(record.member, guest("ada"));
    assert_eq!(record.rooms, [RoomName::lobby()]);
    assert!(store.get(&ConnectionId::random()).await.unwrap().is_none());

    assert_eq!(store.join(&ada, &r, 50).await.unwrap(), JoinOutcome::Joined);
    assert_eq!(
        store.join(&ada, &r, 50).await.unwrap(),
        JoinOutcome::AlreadyMember
    );
    assert_eq!(store.join(&bob, &r, 50).await.unwrap(), JoinOutcome::Joined);
    assert_eq!(
        store.join(&bob, &room("third"), 2).await.unwrap(),
        JoinOutcome::LimitExceeded
    );
    assert_eq!(
        store.join(&ConnectionId::random(), &r, 50).await.unwrap(),
        JoinOutcome::NoConnection
    );
    // Rooms in the order joined; members in the order they joined.
    assert_eq!(
        rooms_of(&*store, &ada).await,
        [RoomName::lobby(), r.clone()]
    );
    assert_eq!(
        store.room_connections(&r).await.unwrap(),
        [ada.clone(), bob.clone()]
    );
    assert_eq!(
        names(&store.room_members(&r, 1000).await.unwrap()),
        ["ada", "bob"]
    );

    assert!(store.leave(&ada, &r).await.unwrap());
    assert!(
        !store.leave(&ada, &r).await.unwrap(),
        "not a member any more"
    );
    assert_eq!(
        store.room_connections(&r).await.unwrap(),
        std::slice::from_ref(&bob)
    );
    assert_eq!(rooms_of(&*store, &ada).await, [RoomName::lobby()]);

    let removed = store.remove(&bob).await.unwrap().unwrap();
    assert_eq!(removed.rooms, [RoomName::lobby(), r.clone()]);
    assert!(store.get(&bob).await.unwrap().is_none());
    assert!(store.room_connections(&r).await.unwrap().is_empty());
    assert_eq!(
        store.room_connections(&RoomName::lobby()).await.unwrap(),
        std::slice::from_ref(&ada)
    );
    assert!(
        store.remove(&bob).await.unwrap().is_none(),
        "removing twice is fine"
    );
    // A removed connection cannot join again (nothing is resurrected by the join).
    assert_eq!(
        store.join(&bob, &r, 50).await.unwrap(),
        JoinOutcome::NoConnection
    );
    assert!(store.get(&bob).await.unwrap().is_none());
}

pub async fn join_answers_joined_already_member_limit_exceeded_or_no_connection(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    let id = connect(&*store, &guest("ada")).await;
    for name in ["a", "b", "c"] {
        assert_eq!(
            store.join(&id, &room(name), 3).await.unwrap(),
            JoinOutcome::Joined,
            "{name}"
        );
    }
    assert_eq!(
        store.join(&id, &room("d"), 3).await.unwrap(),
        JoinOutcome::LimitExceeded,
        "a fourth room of 3"
    );
    assert_eq!(
        store.join(&id, &room("a"), 3).await.unwrap(),
        JoinOutcome::AlreadyMember,
        "a room it is in, even at the limit"
    );
    assert_eq!(
        store.join(&id, &room("d"), 4).await.unwrap(),
        JoinOutcome::Joined,
        "the limit is the caller's"
    );
    assert_eq!(
        store.join(&id, &room("e"), 4).await.unwrap(),
        JoinOutcome::LimitExceeded
    );
    // The refused join left nothing behind.
    assert_eq!(
        rooms_of(&*store, &id).await,
        [room("a"), room("b"), room("c"), room("d")]
    );
    assert!(store.room_connections(&room("e")).await.unwrap().is_empty());
    assert!(store.room_members(&room("e"), 10).await.unwrap().is_empty());
    // Leaving makes room for another.
    assert!(store.leave(&id, &room("b")).await.unwrap());
    assert_eq!(
        store.join(&id, &room("e"), 4).await.unwrap(),
        JoinOutcome::Joined
    );
    assert_eq!(
        rooms_of(&*store, &id).await,
        [room("a"), room("c"), room("d"), room("e")]
    );
    assert_eq!(
        store
            .join(&ConnectionId::random(), &room("a"), 50)
            .await
            .unwrap(),
        JoinOutcome::NoConnection
    );
    assert_eq!(
        store.room_connections(&room("a")).await.unwrap(),
        std::slice::from_ref(&id),
        "a join of no connection adds nobody"
    );
}

pub async fn leave_is_false_unless_a_member_and_a_room_left_can_be_joined_again(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    let ada = connect(&*store, &guest("ada")).await;
    let bob = connect(&*store, &guest("bob")).await;
    assert!(
        !store.leave(&ada, &room("r")).await.unwrap(),
        "never joined"
    );
    assert!(
        !store
            .leave(&ConnectionId::random(), &room("r"))
            .await
            .unwrap(),
        "no such connection"
    );
    for id in [&ada, &bob] {
        store.join(id, &room("r"), 50).await.unwrap();
    }
    store.join(&ada, &room("s"), 50).await.unwrap();
    assert!(
        !store.leave(&ada, &room("R")).await.unwrap(),
        "room names are case-sensitive"
    );
    assert!(store.leave(&ada, &room("r")).await.unwrap());
    assert!(
        !store.leave(&ada, &room("r")).await.unwrap(),
        "left already"
    );
    assert_eq!(rooms_of(&*store, &ada).await, [room("s")]);
    assert_eq!(
        names(&store.room_members(&room("r"), 10).await.unwrap()),
        ["bob"]
    );
    // Joining again puts the room last, and the connection last in the room.
    assert_eq!(
        store.join(&ada, &room("r"), 50).await.unwrap(),
        JoinOutcome::Joined
    );
    assert_eq!(rooms_of(&*store, &ada).await, [room("s"), room("r")]);
    assert_eq!(
        store.room_connections(&room("r")).await.unwrap(),
        [bob.clone(), ada.clone()]
    );
    assert_eq!(
        names(&store.room_members(&room("r"), 10).await.unwrap()),
        ["bob", "ada"]
    );
}

pub async fn a_room_lists_its_connections_and_members_in_the_order_they_joined(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    let mut ids = Vec::new();
    for name in ["c0", "c1", "c2", "c3", "c4"] {
        ids.push(connect(&*store, &guest(name)).await);
    }
    // Joined in another order than inserted.
    let order = [3, 1, 4, 0, 2];
    for &i in &order {
        store.join(&ids[i], &room("r"), 50).await.unwrap();
    }
    let joined: Vec<ConnectionId> = order.iter().map(|&i| ids[i].clone()).collect();
    assert_eq!(store.room_connections(&room("r")).await.unwrap(), joined);
    assert_eq!(
        names(&store.room_members(&room("r"), 100).await.unwrap()),
        ["c3", "c1", "c4", "c0", "c2"]
    );
    assert_eq!(
        names(&store.room_members(&room("r"), 2).await.unwrap()),
        ["c3", "c1"],
        "at most the limit, the first joined first"
    );
    assert!(store.room_members(&room("r"), 0).await.unwrap().is_empty());
    // A connection's rooms are in the order it joined them, not sorted.
    for name in ["z", "a", "m"] {
        store.join(&ids[0], &room(name), 50).await.unwrap();
    }
    assert_eq!(
        rooms_of(&*store, &ids[0]).await,
        [room("r"), room("z"), room("a"), room("m")]
    );
    // Rooms whose names are alike are other rooms.
    for name in ["R", "r1", "z"] {
        let expected: &[ConnectionId] = if name == "z" {
            std::slice::from_ref(&ids[0])
        } else {
            &[]
        };
        assert_eq!(
            store.room_connections(&room(name)).await.unwrap(),
            expected,
            "{name}"
        );
    }
    assert!(
        store
            .room_connections(&room("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .room_members(&room("nobody"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn the_same_person_on_two_connections_is_listed_once(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    connect_to_lobby(&*store, "ada").await;
    connect_to_lobby(&*store, "ada").await;
    connect_to_lobby(&*store, "bob").await;
    let lobby = RoomName::lobby();
    assert_eq!(store.room_connections(&lobby).await.unwrap().len(), 3);
    assert_eq!(
        names(&store.room_members(&lobby, 1000).await.unwrap()),
        ["ada", "bob"]
    );
    assert_eq!(
        names(&store.room_members(&lobby, 1).await.unwrap()),
        ["ada"]
    );
    // The same person is the same member (name and user id): a user and a guest of one name,
    // or two users of one name, are two people.
    let r = room("r");
    let people: [Member; 5] = [
        user("eve", "u1"),
        user("eve", "u1"),
        guest("eve"),
        user("eve", "u2"),
        guest("eve"),
    ];
    for person in &people {
        let id = connect(&*store, person).await;
        store.join(&id, &r, 50).await.unwrap();
    }
    assert_eq!(store.room_connections(&r).await.unwrap().len(), 5);
    assert_eq!(
        store.room_members(&r, 100).await.unwrap(),
        [user("eve", "u1"), guest("eve"), user("eve", "u2")]
    );
    assert_eq!(
        store.room_members(&r, 2).await.unwrap(),
        [user("eve", "u1"), guest("eve")],
        "the limit counts people, not connections"
    );
}

pub async fn removing_a_connection_returns_its_record_and_takes_it_out_of_every_room(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    let ada = user("ada", "u1");
    let id = connect(&*store, &ada).await;
    let bob = connect(&*store, &guest("bob")).await;
    let rooms = [RoomName::lobby(), room("b"), room("a"), room("c")];
    for r in &rooms {
        store.join(&id, r, 50).await.unwrap();
    }
    for r in &rooms[..2] {
        store.join(&bob, r, 50).await.unwrap();
    }
    let removed = store.remove(&id).await.unwrap();
    assert_eq!(
        removed,
        Some(ConnectionRecord {
            id: id.clone(),
            member: ada,
            connected_at_ms: CONNECTED_AT_MS,
            rooms: rooms.to_vec(),
            grants: Vec::new(),
            allowance: None,
        })
    );
    for r in &rooms {
        let left: &[ConnectionId] = if rooms[..2].contains(r) {
            std::slice::from_ref(&bob)
        } else {
            &[]
        };
        assert_eq!(store.room_connections(r).await.unwrap(), left, "{r}");
        let members = if left.is_empty() {
            vec![]
        } else {
            vec![guest("bob")]
        };
        assert_eq!(store.room_members(r, 10).await.unwrap(), members, "{r}");
    }
    assert!(store.get(&id).await.unwrap().is_none());
    assert!(
        store.remove(&id).await.unwrap().is_none(),
        "removing twice is fine"
    );
    assert!(
        store
            .remove(&ConnectionId::random())
            .await
            .unwrap()
            .is_none()
    );
    assert!(!store.leave(&id, &room("a")).await.unwrap());
    assert_eq!(
        store.join(&id, &room("a"), 50).await.unwrap(),
        JoinOutcome::NoConnection
    );
    assert!(
        !store
            .take_send_allowance(&id, RateLimit::default(), 1_000_000)
            .await
            .unwrap(),
        "a removed connection sends nothing"
    );
    assert!(
        store.get(&id).await.unwrap().is_none(),
        "and nothing brought it back"
    );
    // The other connection is untouched.
    assert_eq!(rooms_of(&*store, &bob).await, rooms[..2]);
}

pub async fn the_send_allowance_is_a_burst_then_refusals(factory: &dyn ConnectionStoreFactory) {
    let store = factory.fresh().await;
    let ada = connect_to_lobby(&*store, "ada").await;
    let limit = RateLimit {
        burst: 3,
        per_second: 10,
    };
    let now = 1_000_000;
    for i in 0..3 {
        assert!(
            store.take_send_allowance(&ada, limit, now).await.unwrap(),
            "token {i}"
        );
    }
    for _ in 0..3 {
        assert!(
            !store.take_send_allowance(&ada, limit, now).await.unwrap(),
            "the burst is used up"
        );
    }
    // The default: a burst of 20.
    let bob = connect_to_lobby(&*store, "bob").await;
    let mut taken = 0;
    for _ in 0..25 {
        if store
            .take_send_allowance(&bob, RateLimit::default(), now)
            .await
            .unwrap()
        {
            taken += 1;
        }
    }
    assert_eq!(taken, 20);
}

pub async fn the_send_allowance_refills_with_time_up_to_the_burst(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    let ada = connect_to_lobby(&*store, "ada").await;
    let limit = RateLimit {
        burst: 3,
        per_second: 10,
    };
    let now = 1_000_000;
    let take = |at: u64| {
        let (store, ada) = (store.clone(), ada.clone());
        async move { store.take_send_allowance(&ada, limit, at).await.unwrap() }
    };
    for _ in 0..3 {
        assert!(take(now).await);
    }
    assert!(!take(now).await, "the burst is used up");
    assert!(!take(now + 99).await, "0.99 of a token after 99 ms");
    assert!(take(now + 100).await, "a token after 100 ms");
    assert!(!take(now + 100).await);
    assert!(take(now + 250).await, "1.5 tokens after 150 ms more");
    assert!(!take(now + 250).await, "and half of one left");
    assert!(take(now + 300).await, "which the next 50 ms complete");
    // A long pause refills only up to the burst.
    let mut taken = 0;
    for _ in 0..10 {
        if take(now + 60_000).await {
            taken += 1;
        }
    }
    assert_eq!(taken, 3);
}

pub async fn only_a_stored_connection_has_a_send_allowance_and_each_has_its_own(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    let limit = RateLimit {
        burst: 2,
        per_second: 1,
    };
    let now = 1_000_000;
    assert!(
        !store
            .take_send_allowance(&ConnectionId::random(), limit, now)
            .await
            .unwrap(),
        "an unknown connection sends nothing"
    );
    let ada = connect_to_lobby(&*store, "ada").await;
    let ada_again = connect_to_lobby(&*store, "ada").await;
    for _ in 0..2 {
        assert!(store.take_send_allowance(&ada, limit, now).await.unwrap());
    }
    assert!(!store.take_send_allowance(&ada, limit, now).await.unwrap());
    // Another connection, even of the same person, has its own.
    for _ in 0..2 {
        assert!(
            store
                .take_send_allowance(&ada_again, limit, now)
                .await
                .unwrap()
        );
    }
    assert!(
        !store
            .take_send_allowance(&ada_again, limit, now)
            .await
            .unwrap()
    );
    // Joining and leaving rooms does not touch it.
    store.join(&ada, &room("r"), 50).await.unwrap();
    store.leave(&ada, &room("r")).await.unwrap();
    assert!(!store.take_send_allowance(&ada, limit, now).await.unwrap());
}

pub async fn concurrent_joins_never_exceed_max_rooms(factory: &dyn ConnectionStoreFactory) {
    let store = factory.fresh().await;
    let id = connect(&*store, &guest("ada")).await;
    let max_rooms = 5;
    let tasks: Vec<_> = (0..15)
        .map(|i| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move {
                let r = room(&format!("r{i}"));
                let outcome = store.join(&id, &r, max_rooms).await.unwrap();
                (r, outcome)
            })
        })
        .collect();
    let mut joined = Vec::new();
    for task in tasks {
        let (r, outcome) = task.await.unwrap();
        match outcome {
            JoinOutcome::Joined => joined.push(r),
            JoinOutcome::LimitExceeded => {}
            other => panic!("{r}: {other:?}"),
        }
    }
    assert_eq!(joined.len(), max_rooms, "joined {joined:?}");
    let mut rooms = rooms_of(&*store, &id).await;
    rooms.sort();
    joined.sort();
    assert_eq!(rooms, joined, "the record holds the rooms joined");
    for i in 0..15 {
        let r = room(&format!("r{i}"));
        let expected: &[ConnectionId] = if joined.contains(&r) {
            std::slice::from_ref(&id)
        } else {
            &[]
        };
        assert_eq!(store.room_connections(&r).await.unwrap(), expected, "{r}");
    }
}

pub async fn concurrent_joins_of_one_room_join_it_once(factory: &dyn ConnectionStoreFactory) {
    let store = factory.fresh().await;
    let id = connect(&*store, &guest("ada")).await;
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.join(&id, &room("r"), 50).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let joined = outcomes
        .iter()
        .filter(|o| **o == JoinOutcome::Joined)
        .count();
    assert_eq!(joined, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, JoinOutcome::Joined | JoinOutcome::AlreadyMember)),
        "{outcomes:?}"
    );
    assert_eq!(rooms_of(&*store, &id).await, [room("r")]);
    assert_eq!(
        store.room_connections(&room("r")).await.unwrap(),
        std::slice::from_ref(&id)
    );
}

pub async fn concurrent_takes_never_spend_more_than_the_allowance(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    let id = connect_to_lobby(&*store, "ada").await;
    let limit = RateLimit {
        burst: 5,
        per_second: 10,
    };
    let now = 1_000_000;
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.take_send_allowance(&id, limit, now).await.unwrap() })
        })
        .collect();
    let mut taken = 0;
    for task in tasks {
        if task.await.unwrap() {
            taken += 1;
        }
    }
    assert_eq!(taken, 5, "exactly the burst, however the takes interleave");
    assert!(!store.take_send_allowance(&id, limit, now).await.unwrap());
    assert!(
        store
            .take_send_allowance(&id, limit, now + 100)
            .await
            .unwrap(),
        "then the rate"
    );
}

pub async fn the_reaction_allowance_is_apart_from_the_send_allowance(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    let ada = connect_to_lobby(&*store, "ada").await;
    let limit = RateLimit {
        burst: 2,
        per_second: 10,
    };
    let now = 1_000_000;
    for _ in 0..2 {
        assert!(store.take_send_allowance(&ada, limit, now).await.unwrap());
    }
    assert!(!store.take_send_allowance(&ada, limit, now).await.unwrap());
    // Messages used up; reactions are untouched, and have their own burst.
    for i in 0..2 {
        assert!(
            store
                .take_reaction_allowance(&ada, limit, now)
                .await
                .unwrap(),
            "reaction {i}"
        );
    }
    assert!(
        !store
            .take_reaction_allowance(&ada, limit, now)
            .await
            .unwrap()
    );
    // Both refill with time.
    assert!(
        store
            .take_reaction_allowance(&ada, limit, now + 100)
            .await
            .unwrap()
    );
    assert!(
        store
            .take_send_allowance(&ada, limit, now + 100)
            .await
            .unwrap()
    );
    // Only a stored connection has one.
    assert!(
        !store
            .take_reaction_allowance(&ConnectionId::random(), limit, now)
            .await
            .unwrap()
    );
}

pub async fn a_users_connections_in_a_room_are_all_of_its_tabs_and_only_those(
    factory: &dyn ConnectionStoreFactory,
) {
    let store = factory.fresh().await;
    let ada = user("Ada", "user-ada");
    let phone = connect(&*store, &ada).await;
    let laptop = connect(&*store, &ada).await;
    let elsewhere = connect(&*store, &ada).await;
    let bob = connect(&*store, &user("Ada", "user-bob")).await;
    let guest = connect(&*store, &guest("Ada")).await;
    let r = room("r");
    for id in [&phone, &laptop, &bob, &guest] {
        assert_eq!(store.join(id, &r, 50).await.unwrap(), JoinOutcome::Joined);
    }
    store.join(&elsewhere, &room("other"), 50).await.unwrap();
    let mut found = store.user_connections(&r, "user-ada").await.unwrap();
    found.sort();
    let mut expected = vec![phone.clone(), laptop.clone()];
    expected.sort();
    assert_eq!(
        found, expected,
        "same name, other users and guests are not hers"
    );
    assert!(
        store
            .user_connections(&r, "nobody")
            .await
            .unwrap()
            .is_empty()
    );
    store.leave(&laptop, &r).await.unwrap();
    assert_eq!(
        store.user_connections(&r, "user-ada").await.unwrap(),
        [phone]
    );
}

pub async fn a_connections_grants_are_stored_with_it(factory: &dyn ConnectionStoreFactory) {
    let store = factory.fresh().await;
    let ada = user("Ada", "user-ada");
    let id = ConnectionId::random();
    let grants = vec!["private.team-1.*".to_owned(), "private.board".to_owned()];
    store
        .insert(&id, &ada, &grants, CONNECTED_AT_MS)
        .await
        .unwrap();
    store.join(&id, &room("r"), 50).await.unwrap();
    let record = store.get(&id).await.unwrap().expect("stored");
    assert_eq!(record.grants, grants);
    assert!(record.may_enter(&room("private.team-1.general"), None, UserAccess::default()));
    assert!(record.may_enter(&room("private.board"), None, UserAccess::default()));
    assert!(
        !record.may_enter(&room("private.board-2"), None, UserAccess::default()),
        "an exact grant is exact"
    );
    assert!(!record.may_enter(&room("private.team-2.general"), None, UserAccess::default()));
    assert!(!record.may_enter(&room("dm.anything"), None, UserAccess::default()));
    let ours = crate::ports::DirectUsers::new("user-ada", "user-bob");
    let theirs = crate::ports::DirectUsers::new("user-bob", "user-cat");
    assert!(
        record.may_enter(&room("dm.x"), Some(&ours), UserAccess::default()),
        "a direct room of hers"
    );
    assert!(!record.may_enter(&room("dm.x"), Some(&theirs), UserAccess::default()));
    assert!(record.may_enter(&room("public-room"), None, UserAccess::default()));
    // The server API's grant opens a private room the token does not cover; its ban closes
    // every room, whatever grants the user has.
    let granted = UserAccess::default().with(AccessChange::Grant(true));
    let banned = granted.with(AccessChange::Ban(true));
    assert!(record.may_enter(&room("private.team-2.general"), None, granted));
    assert!(!record.may_enter(&room("private.team-2.general"), None, banned));
    assert!(!record.may_enter(&room("private.team-1.general"), None, banned));
    assert!(!record.may_enter(&room("public-room"), None, banned));
    assert!(!record.may_enter(&room("dm.x"), Some(&ours), banned));
    let removed = store.remove(&id).await.unwrap().expect("removed");
    assert_eq!(removed.grants, grants);
}
