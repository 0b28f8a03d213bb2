use crate::DomainError;

/// An aggregate as three pure things: an initial state, `decide` and `evolve`.
///
/// `decide` answers a command with the events it causes (or a rejection) given the state folded
/// from the stream so far; `evolve` folds one event into the state. Neither may do I/O.
pub trait Decider {
    type Command;
    type Event;
    type State: Default;

    /// The events `command` causes in `state`, or why it is rejected.
    fn decide(command: &Self::Command, state: &Self::State) -> Result<Vec<Self::Event>, DomainError>;

    /// The state after `event`.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// The state after every event of a stream, in order.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::State::default(), Self::evolve)
    }
}
