// Scenario 4: a client's awareness state (user and cursor) reaches the other clients, updates
// follow, a client joining later gets it at once, and it disappears from the others when its
// client's connection drops without a goodbye (the server removes it; the clients' own 30 s
// timeout is not waited for). Prints {ok, removed_after_ms}.

import { canonical, connect, dropConnection, options, run, synced, waitFor } from './lib.mjs'

const opts = options()

/** Waits until `observer` sees `state` (null: no state) for `subject`. */
function sees (observer, subject, state, what, ms) {
  const id = subject.doc.clientID
  return waitFor(() => canonical(observer.awareness.getStates().get(id) ?? null) === canonical(state),
    `${observer.name} to see ${what}`, ms)
}

run(async () => {
  const a = connect(opts, { name: 'a' })
  const b = connect(opts, { name: 'b' })
  await Promise.all([synced(a), synced(b)])

  const user = { name: 'alice', color: '#ff8800' }
  a.awareness.setLocalState({ user, cursor: { anchor: 3, head: 5 } })
  await sees(b, a, { user, cursor: { anchor: 3, head: 5 } }, 'a\'s cursor')
  a.awareness.setLocalStateField('cursor', { anchor: 8, head: 8 })
  await sees(b, a, { user, cursor: { anchor: 8, head: 8 } }, 'a\'s moved cursor')

  // Within 5 s: sooner than a's own renewal (every 15 s), so only the server can have sent it.
  const c = connect(opts, { name: 'c' })
  await synced(c)
  await sees(c, a, { user, cursor: { anchor: 8, head: 8 } }, 'a\'s cursor on joining', 5000)

  const dropped = Date.now()
  dropConnection(a)
  await Promise.all([
    sees(b, a, null, 'a\'s state removed after a dropped', 10000),
    sees(c, a, null, 'a\'s state removed after a dropped', 10000)
  ])
  return { removed_after_ms: Date.now() - dropped }
})
