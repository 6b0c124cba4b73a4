//! Conformance suites of the ports (feature `testing`): the contract of each port, written once
//! as tests that any adapter runs against itself.
//!
//! - [`message_store`]: the [`MessageStore`](crate::ports::MessageStore) suite, over a
//!   [`MessageStoreFactory`](message_store::MessageStoreFactory).
//! - [`connection_store`]: the [`ConnectionStore`](crate::ports::ConnectionStore) suite, over a
//!   [`ConnectionStoreFactory`](connection_store::ConnectionStoreFactory).
//! - [`notifier`]: the [`Notifier`](crate::ports::Notifier) suite, over a
//!   [`NotifierHarness`](notifier::NotifierHarness) (live and gone connections, and what a live
//!   one received).
//! - [`fixtures`]: the members, rooms and messages the suites use, for adapter-specific tests too.
//!
//! Each suite is a set of `pub async fn`s, one per rule of the port, and a macro that turns every
//! one of them into a `#[test]` (on a multi-threaded tokio runtime) of the caller's crate, in a
//! module named after the port. An adapter's test file is then a few lines, and a test added to a
//! suite runs against every adapter:
//!
//! ```no_run
//! // tests/conformance.rs of an adapter's crate, with this in its Cargo.toml:
//! // [dev-dependencies] chat-core = { workspace = true, features = ["testing"] }
//! use chat_core::memory::{MemoryConnections, MemoryMessages};
//!
//! chat_core::message_store_conformance!(|| async { MemoryMessages::new() });
//! chat_core::connection_store_conformance!(|| async { MemoryConnections::new() });
//! # fn main() {}
//! ```
//!
//! A factory is any `Fn() -> impl Future<Output = impl Store>` (as above), or a type that
//! implements the factory trait itself, for a store that needs something kept alive for as long
//! as the test runs (a temporary directory: see `chat-sqlite`'s tests). The macro's argument is
//! evaluated once per test, inside the test's async body, so it may `.await`. To run a suite
//! twice in one file (another configuration of the same adapter), invoke the macro inside a
//! module of your own: the tests are then `my_module::connection_store::…`.
//!
//! Each test gets a fresh store from the factory, and may use any room name and connection id:
//! a factory must not hand two tests the same data (DynamoDB: fresh tables per test).

pub mod connection_store;
pub mod fixtures;
pub mod message_store;
pub mod notifier;

use std::future::Future;

/// Runs one test of a suite on a multi-threaded tokio runtime (two workers, so that the
/// concurrency tests race for real). Used by the macros, so that the caller's crate needs no
/// tokio of its own.
#[doc(hidden)]
pub fn run(test: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the test")
        .block_on(test)
}

/// One `#[test]` per suite function, in a module named `$module`; each evaluates `$factory` and
/// hands it to the function. The shared body of the three public macros.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($module:ident, $suite:ident, $factory:expr, [$($test:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $test() {
                    $crate::testing::run(async {
                        let factory = $factory;
                        $crate::testing::$suite::$test(&factory).await;
                    });
                }
            )*
        }
    };
}

/// Every test of the [`MessageStore`](crate::ports::MessageStore) suite
/// ([`testing::message_store`](crate::testing::message_store)), as `#[test]`s in a module
/// `message_store`, each with a store from the factory given (a
/// [`MessageStoreFactory`](crate::testing::message_store::MessageStoreFactory), such as
/// `|| async { MemoryMessages::new() }`).
#[macro_export]
macro_rules! message_store_conformance {
    ($factory:expr $(,)?) => {
        $crate::__conformance_tests!(
            message_store,
            message_store,
            $factory,
            [
                append_stores_every_field_and_ts_is_the_time_of_the_id,
                appends_get_increasing_ids_in_the_order_they_are_stored,
                each_rooms_messages_are_numbered_from_1_without_gaps,
                a_reader_following_seq_during_concurrent_appends_misses_nothing,
                a_client_msg_id_is_stored_once_per_sender_and_room,
                an_authenticated_sender_is_known_by_user_id_not_by_name,
                messages_without_a_client_msg_id_are_never_duplicates,
                find_by_client_msg_id_finds_only_that_senders_message_in_that_room,
                pages_go_backwards_with_before_and_forwards_with_after,
                an_id_that_names_no_message_is_still_a_position,
                pages_match_the_reference_paging_in_every_direction,
                an_empty_room_has_an_empty_page_in_every_direction,
                rooms_are_independent_of_each_other,
                long_messages_of_multi_byte_text_are_kept_verbatim,
                concurrent_appends_are_all_stored_once_in_id_order,
                concurrent_appends_with_the_same_client_msg_id_store_one_message,
                edits_and_deletes_are_events_with_the_rooms_next_seq,
                a_change_to_a_missing_or_deleted_message_is_gone_and_adds_no_event,
                events_after_a_seq_hold_messages_and_changes_in_seq_order,
                only_the_sender_may_change_a_message,
                a_reaction_counts_once_per_user_and_kind_and_is_an_event,
                a_message_holds_at_most_twenty_kinds_of_reaction,
                read_state_moves_forward_only_and_counts_the_messages_after_it,
                a_direct_room_keeps_its_two_users,
                grants_and_bans_are_kept_per_room_and_user_each_apart,
            ]
        );
    };
}

/// Every test of the [`ConnectionStore`](crate::ports::ConnectionStore) suite
/// ([`testing::connection_store`](crate::testing::connection_store)), as `#[test]`s in a module
/// `connection_store`, each with a store from the factory given (a
/// [`ConnectionStoreFactory`](crate::testing::connection_store::ConnectionStoreFactory), such as
/// `|| async { MemoryConnections::new() }`).
#[macro_export]
macro_rules! connection_store_conformance {
    ($factory:expr $(,)?) => {
        $crate::__conformance_tests!(
            connection_store,
            connection_store,
            $factory,
            [
                an_inserted_connection_is_read_back_in_no_room,
                a_connection_is_stored_joins_and_leaves_rooms_and_is_removed_with_its_memberships,
                join_answers_joined_already_member_limit_exceeded_or_no_connection,
                leave_is_false_unless_a_member_and_a_room_left_can_be_joined_again,
                a_room_lists_its_connections_and_members_in_the_order_they_joined,
                the_same_person_on_two_connections_is_listed_once,
                removing_a_connection_returns_its_record_and_takes_it_out_of_every_room,
                the_send_allowance_is_a_burst_then_refusals,
                the_reaction_allowance_is_apart_from_the_send_allowance,
                a_users_connections_in_a_room_are_all_of_its_tabs_and_only_those,
                a_connections_grants_are_stored_with_it,
                the_send_allowance_refills_with_time_up_to_the_burst,
                only_a_stored_connection_has_a_send_allowance_and_each_has_its_own,
                concurrent_joins_never_exceed_max_rooms,
                concurrent_joins_of_one_room_join_it_once,
                concurrent_takes_never_spend_more_than_the_allowance,
            ]
        );
    };
}

/// Every test of the [`Notifier`](crate::ports::Notifier) suite
/// ([`testing::notifier`](crate::testing::notifier)), as `#[test]`s in a module `notifier`, each
/// with the [`NotifierHarness`](crate::testing::notifier::NotifierHarness) the expression gives
/// (evaluated once per test; it may `.await`).
#[macro_export]
macro_rules! notifier_conformance {
    ($harness:expr $(,)?) => {
        $crate::__conformance_tests!(
            notifier,
            notifier,
            $harness,
            [
                send_delivers_the_exact_text_once_and_in_order,
                send_to_a_gone_connection_is_gone_and_reaches_no_one,
                broadcast_delivers_to_every_live_connection_and_returns_the_gone_ones,
                broadcast_to_200_connections_with_some_gone_reaches_each_live_one_once,
                broadcast_to_no_connection_returns_nothing,
            ]
        );
    };
}
