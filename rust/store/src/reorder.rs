//! The fetch engine's reorder buffer: which finished reads may go to the
//! consumer, and when.
//!
//! Reads are numbered (`seq`) in plan order across every epoch of a stream;
//! each epoch is a run of consecutive numbers. Finished reads are held until
//! deliverable:
//!
//! - in plan order (`ordered`), the next number; but an error of the epoch
//!   under way at once (the first held, in plan order), so that the consumer
//!   does not wait for batches that will never complete the epoch;
//! - in completion order, any read of the epoch under way;
//! - in either order, no read of an epoch before every read of the previous
//!   one has been delivered. An epoch with no reads is over as soon as it starts.
//!
//! An error ends the stream: nothing is to be taken after one.

use std::collections::{BTreeMap, VecDeque};

pub struct ReorderBuffer<T, E> {
    ordered: bool,
    /// Finished reads not yet delivered: out of order, or of a later epoch.
    held: BTreeMap<usize, Result<T, E>>,
    /// Where each epoch not yet over ends in the sequence of all reads.
    epoch_ends: VecDeque<usize>,
    /// Reads planned so far, over all epochs.
    planned: usize,
    /// Reads delivered so far; in plan order, those numbered below it.
    delivered: usize,
}

impl<T, E> ReorderBuffer<T, E> {
    /// An empty buffer, delivering in plan order if `ordered`, with no epoch planned.
    pub fn new(ordered: bool) -> Self {
        Self {
            ordered,
            held: BTreeMap::new(),
            epoch_ends: VecDeque::new(),
            planned: 0,
            delivered: 0,
        }
    }

    /// Plans a next epoch of `reads` reads, numbered after every read planned so far.
    pub fn add_epoch(&mut self, reads: usize) {
        self.planned += reads;
        self.epoch_ends.push_back(self.planned);
    }

    /// Finished reads waiting to be delivered.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes in the result of read `seq`.
    pub fn insert(&mut self, seq: usize, result: Result<T, E>) {
        debug_assert!(seq < self.planned, "read {seq} was never planned");
        self.held.insert(seq, result);
    }

    /// The next result to deliver, if any is deliverable now.
    pub fn pop(&mut self) -> Option<Result<T, E>> {
        // Epochs with nothing left to deliver (an empty one included) are over.
        while self
            .epoch_ends
            .front()
            .is_some_and(|&end| end <= self.delivered)
        {
            self.epoch_ends.pop_front();
        }
        let end = self.epoch_ends.front().copied().unwrap_or(usize::MAX);
        let seq = self.next_deliverable(end)?;
        self.delivered += 1;
        self.held.remove(&seq)
    }

    fn next_deliverable(&self, end: usize) -> Option<usize> {
        if !self.ordered {
            return self.held.range(..end).next().map(|(&seq, _)| seq);
        }
        if self.held.contains_key(&self.delivered) {
            return Some(self.delivered);
        }
        self.held
            .range(..end)
            .find(|(_, r)| r.is_err())
            .map(|(&seq, _)| seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Buffer = ReorderBuffer<usize, usize>;

    fn with_epochs(ordered: bool, epochs: &[usize]) -> Buffer {
        let mut b = Buffer::new(ordered);
        for &n in epochs {
            b.add_epoch(n);
        }
        b
    }

    /// Everything deliverable now: Ok(seq) as seq, Err(seq) as seq + 1000.
    fn drain(b: &mut Buffer) -> Vec<usize> {
        std::iter::from_fn(|| b.pop())
            .map(|r| r.unwrap_or_else(|seq| seq + 1000))
            .collect()
    }

    fn ok(b: &mut Buffer, seq: usize) {
        b.insert(seq, Ok(seq));
    }

    #[test]
    fn in_plan_order_a_read_waits_for_those_before_it() {
        let mut b = with_epochs(true, &[4]);
        ok(&mut b, 2);
        ok(&mut b, 1);
        assert!(drain(&mut b).is_empty());
        assert_eq!(b.held(), 2);
        ok(&mut b, 0);
        assert_eq!(drain(&mut b), [0, 1, 2]);
        ok(&mut b, 3);
        assert_eq!(drain(&mut b), [3]);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn in_completion_order_a_read_goes_at_once() {
        let mut b = with_epochs(false, &[4]);
        ok(&mut b, 2);
        assert_eq!(drain(&mut b), [2]);
        ok(&mut b, 3);
        ok(&mut b, 0);
        assert_eq!(drain(&mut b), [0, 3]);
        ok(&mut b, 1);
        assert_eq!(drain(&mut b), [1]);
    }

    #[test]
    fn an_error_goes_at_once_the_first_in_plan_order() {
        let mut b = with_epochs(true, &[6]);
        ok(&mut b, 1);
        b.insert(4, Err(4));
        b.insert(3, Err(3));
        assert_eq!(b.pop(), Some(Err(3)), "the earliest error, before batch 0");
        let mut b = with_epochs(false, &[6]);
        b.insert(4, Err(4));
        assert_eq!(b.pop(), Some(Err(4)));
    }

    #[test]
    fn epochs_are_never_mixed_nor_their_errors() {
        for (ordered, first, rest) in [
            (true, vec![], vec![0, 1, 2, 3]),
            (false, vec![1], vec![0, 2, 3]),
        ] {
            let mut b = with_epochs(ordered, &[2, 2]);
            ok(&mut b, 3);
            ok(&mut b, 2);
            ok(&mut b, 1);
            assert_eq!(drain(&mut b), first, "ordered={ordered}");
            ok(&mut b, 0);
            assert_eq!(drain(&mut b), rest, "ordered={ordered}");
            // An error of the next epoch waits for the current one.
            let mut b = with_epochs(ordered, &[2, 2]);
            b.insert(2, Err(2));
            assert!(drain(&mut b).is_empty(), "ordered={ordered}");
            ok(&mut b, 0);
            ok(&mut b, 1);
            assert_eq!(drain(&mut b), [0, 1, 1002], "ordered={ordered}");
        }
    }

    #[test]
    fn empty_epochs_are_over_at_once() {
        for ordered in [true, false] {
            let mut b = with_epochs(ordered, &[0, 2, 0, 0, 1]);
            ok(&mut b, 2);
            assert!(drain(&mut b).is_empty());
            ok(&mut b, 1);
            ok(&mut b, 0);
            assert_eq!(drain(&mut b), [0, 1, 2], "ordered={ordered}");
        }
    }

    #[test]
    fn epochs_planned_after_every_read_is_delivered() {
        for ordered in [true, false] {
            let mut b = with_epochs(ordered, &[1]);
            ok(&mut b, 0);
            assert_eq!(drain(&mut b), [0]);
            b.add_epoch(0);
            b.add_epoch(3);
            ok(&mut b, 3);
            ok(&mut b, 1);
            ok(&mut b, 2);
            assert_eq!(drain(&mut b), [1, 2, 3], "ordered={ordered}");
            assert!(b.pop().is_none());
        }
    }
}
