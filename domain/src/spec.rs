//! Given / when / then for a decider's tests, so that each reads as a line of its specification:
//! given the stream so far (as events, or as the commands that made it), when a command comes,
//! then these events follow, or this rejection.

use std::fmt::Debug;

use crate::{Decider, DomainError};

/// A stream's state before the command under test.
pub struct Given<D: Decider> {
    state: D::State,
}

impl<D: Decider> Given<D> {
    /// The stream so far, as its events.
    pub fn events<'a>(events: impl IntoIterator<Item = &'a D::Event>) -> Self
    where
        D::Event: 'a,
    {
        Self { state: D::fold(events) }
    }

    /// The stream so far, as the commands that made it; each must be accepted.
    #[track_caller]
    pub fn commands<'a>(commands: impl IntoIterator<Item = &'a D::Command>) -> Self
    where
        D::Command: Debug + 'a,
    {
        let state = commands.into_iter().fold(D::State::default(), |state, command| {
            let events = D::decide(command, &state).unwrap_or_else(|e| panic!("given {command:?} was rejected: {e}"));
            events.iter().fold(state, D::evolve)
        });
        Self { state }
    }

    /// The state the stream folds to.
    pub fn into_state(self) -> D::State {
        self.state
    }

    /// The decider's answer to `command` on that stream.
    pub fn when(self, command: &D::Command) -> Then<D> {
        let answer = D::decide(command, &self.state);
        Then { state: self.state, answer }
    }
}

/// A decider's answer to the command under test.
pub struct Then<D: Decider> {
    state: D::State,
    answer: Result<Vec<D::Event>, DomainError>,
}

impl<D: Decider> Then<D>
where
    D::Event: PartialEq + Debug,
{
    /// Asserts that the command caused exactly `expected`; the state after them, for the next step.
    #[track_caller]
    pub fn then(self, expected: &[D::Event]) -> D::State {
        match self.answer {
            Ok(events) => {
                assert_eq!(events, expected, "the command caused other events");
                events.iter().fold(self.state, D::evolve)
            }
            Err(e) => panic!("the command was rejected ({e}), expected {expected:?}"),
        }
    }

    /// Asserts that the command was rejected with `expected`.
    #[track_caller]
    pub fn then_rejected(self, expected: DomainError) {
        match self.answer {
            Ok(events) => panic!("the command was accepted with {events:?}, expected the rejection {expected:?}"),
            Err(e) => assert_eq!(e, expected),
        }
    }

    /// The answer itself, for assertions on its shape.
    pub fn answer(self) -> Result<Vec<D::Event>, DomainError> {
        self.answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter that refuses to go below zero.
    struct Counter;

    #[derive(Debug, PartialEq)]
    enum Counted {
        Up,
        Down,
    }

    impl Decider for Counter {
        type Command = i8;
        type Event = Counted;
        type State = u32;

        fn decide(step: &i8, count: &u32) -> Result<Vec<Counted>, DomainError> {
            match step {
                1 => Ok(vec![Counted::Up]),
                -1 if *count > 0 => Ok(vec![Counted::Down]),
                _ => Err(DomainError::invalid("step", "would go below zero")),
            }
        }

        fn evolve(count: u32, event: &Counted) -> u32 {
            match event {
                Counted::Up => count + 1,
                Counted::Down => count - 1,
            }
        }
    }

    #[test]
    fn given_events_or_commands_when_a_command_then_its_events_or_rejection() {
        let state = Given::<Counter>::events(&[Counted::Up]).when(&1).then(&[Counted::Up]);
        assert_eq!(state, 2);
        assert_eq!(Given::<Counter>::commands(&[1, 1, -1]).into_state(), 1);
        Given::<Counter>::commands(&[]).when(&-1).then_rejected(DomainError::invalid("step", "would go below zero"));
    }

    #[test]
    #[should_panic(expected = "the command caused other events")]
    fn then_fails_on_other_events() {
        Given::<Counter>::events(&[]).when(&1).then(&[Counted::Down]);
    }

    #[test]
    #[should_panic(expected = "was accepted")]
    fn then_rejected_fails_when_accepted() {
        Given::<Counter>::events(&[]).when(&1).then_rejected(DomainError::invalid("step", "x"));
    }

    #[test]
    #[should_panic(expected = "was rejected")]
    fn a_given_command_must_be_accepted() {
        Given::<Counter>::commands(&[-1]);
    }
}
