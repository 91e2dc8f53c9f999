//! A connection's topics (its subscriptions, the rooms and presence it was admitted to),
//! each with a value: a vector sorted by topic. Most connections hold one topic or a few,
//! where a hash map's smallest table is several times their size; the session bounds how
//! many there may be (`max_subscriptions`), and a lookup is a binary search.

/// Topics, sorted, each with a `V`.
pub(super) struct TopicMap<V>(Vec<(Box<str>, V)>);

impl<V> Default for TopicMap<V> {
    fn default() -> Self {
        TopicMap(Vec::new())
    }
}

impl<V> TopicMap<V> {
    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(t, _)| (**t).cmp(topic))
    }

    pub fn get(&self, topic: &str) -> Option<&V> {
        self.find(topic).ok().map(|at| &self.0[at].1)
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.find(topic).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Sets `topic`'s value, adding the topic if it is not there. Grows by one place at a
    /// time: what a connection holds is exactly its topics.
    pub fn insert(&mut self, topic: &str, value: V) {
        match self.find(topic) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => {
                self.0.reserve_exact(1);
                self.0.insert(at, (topic.into(), value));
            }
        }
    }

    /// Removes `topic`; whether it was there.
    pub fn remove(&mut self, topic: &str) -> bool {
        match self.find(topic) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(t, _)| &**t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_stay_sorted_and_exact() {
        let mut map = TopicMap::default();
        for (topic, value) in [("c", 3), ("a", 1), ("b", 2), ("a", 10)] {
            map.insert(topic, value);
        }
        assert_eq!(map.topics().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(map.get("a"), Some(&10));
        assert_eq!(map.len(), 3);
        assert!(!map.contains("ab"));
        assert!(map.remove("b"));
        assert!(!map.remove("b"));
        assert_eq!(map.get("b"), None);
        assert_eq!(map.topics().collect::<Vec<_>>(), ["a", "c"]);
    }
}
