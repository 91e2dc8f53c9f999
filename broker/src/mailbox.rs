//! A connection's queues (what the switchboard delivers to it, and the rare controls: close,
//! taken over, stop delivering a topic), as small as such a thing can be while idle.
//!
//! An idle connection holds its queues for its whole life. A tokio channel allocates its
//! cache-padded state and its first block of 32 slots when it is made: about 2.5 KB for the
//! deliveries and 1.4 KB for the controls, 40% of what an idle connection cost. A mailbox is
//! a `VecDeque` behind a mutex and a [`Notify`]: about 100 bytes until something is sent,
//! and it gives back what it holds once it is empty again (a queue that kept even 16 slots
//! would cost every connection that ever had a delivery 512 bytes for its whole life). One
//! producer at a time and one reader per connection, so the mutex is next to never
//! contended.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

struct Shared<T> {
    items: Mutex<VecDeque<T>>,
    notify: Notify,
    /// The most items it holds; [`Poster::try_post`] refuses more.
    bound: usize,
}

/// Posts to a [`Mailbox`]; cheap to clone.
pub struct Poster<T>(Arc<Shared<T>>);

/// The receiving end: one reader.
pub struct Mailbox<T>(Arc<Shared<T>>);

/// A mailbox without a bound, for messages that are rare by nature.
pub fn mailbox<T>() -> (Poster<T>, Mailbox<T>) {
    bounded(usize::MAX)
}

/// A mailbox that holds at most `bound` items.
pub fn bounded<T>(bound: usize) -> (Poster<T>, Mailbox<T>) {
    let shared = Arc::new(Shared {
        items: Mutex::new(VecDeque::new()),
        notify: Notify::new(),
        bound,
    });
    (Poster(shared.clone()), Mailbox(shared))
}

impl<T> Clone for Poster<T> {
    fn clone(&self) -> Self {
        Poster(self.0.clone())
    }
}

impl<T> Poster<T> {
    /// Posts `item`; the reader wakes (now, or at its next `recv`).
    pub fn post(&self, item: T) {
        self.0.items.lock().unwrap().push_back(item);
        self.0.notify.notify_one();
    }

    /// Posts `item` unless the mailbox is full, in which case it comes back.
    pub fn try_post(&self, item: T) -> Result<(), T> {
        {
            let mut items = self.0.items.lock().unwrap();
            if items.len() >= self.0.bound {
                return Err(item);
            }
            items.push_back(item);
        }
        self.0.notify.notify_one();
        Ok(())
    }
}

impl<T> Mailbox<T> {
    /// The next item, waiting for one. Cancel-safe: an item is only taken when returned.
    pub async fn recv(&mut self) -> T {
        loop {
            if let Some(item) = self.try_recv() {
                return item;
            }
            // `notify_one` leaves a permit when nobody waits, so a post between the check
            // above and this wait is not missed.
            self.0.notify.notified().await;
        }
    }

    /// The next item, if one is there.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut items = self.0.items.lock().unwrap();
        let item = items.pop_front();
        if item.is_none() && items.capacity() > 0 {
            *items = VecDeque::new();
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_whether_posted_before_or_during_the_wait() {
        let (poster, mut mailbox) = mailbox();
        poster.post(1);
        poster.post(2);
        assert_eq!(mailbox.recv().await, 1);
        assert_eq!(mailbox.try_recv(), Some(2));
        assert_eq!(mailbox.try_recv(), None);
        let later = poster.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            later.post(3);
        });
        assert_eq!(mailbox.recv().await, 3);
    }

    #[test]
    fn a_full_mailbox_refuses_and_gives_back_its_burst() {
        let (poster, mut mailbox) = bounded(100);
        for i in 0..100 {
            poster.try_post(i).unwrap();
        }
        assert_eq!(poster.try_post(100), Err(100));
        assert!(mailbox.0.items.lock().unwrap().capacity() >= 100);
        while mailbox.try_recv().is_some() {}
        assert_eq!(mailbox.0.items.lock().unwrap().capacity(), 0);
        poster.try_post(7).unwrap();
        assert_eq!(mailbox.try_recv(), Some(7));
    }

    #[tokio::test]
    async fn a_cancelled_wait_loses_nothing() {
        let (poster, mut mailbox) = mailbox::<u8>();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(10), mailbox.recv()).await;
        assert!(waited.is_err());
        poster.post(7);
        assert_eq!(mailbox.recv().await, 7);
    }
}
