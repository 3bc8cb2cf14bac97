// Scenario 6, first half: a writer adds itinerary items `edit-0`, `edit-1`, … one update each
// while an observer watches, until the server goes away (the test kills it with SIGKILL). An
// edit is acknowledged when the server echoed it to the writer or relayed it to the observer,
// both of which it does only after the commit. Prints {"echoed": N} each time more edits were
// echoed, then {ok, written, echoed, observed}.

import { Y, connect, options, ownClock, run, sleep, synced, waitFor } from './lib.mjs'

const opts = options({
  edits: { type: 'string', default: '1000' },
  'interval-ms': { type: 'string', default: '2' }
})

/** Stops a client's provider as soon as its connection closes, so that it never reconnects. */
function stopOnClose (client) {
  client.provider.on('status', ({ status }) => {
    if (status === 'disconnected') client.provider.disconnect()
  })
}

run(async () => {
  const writer = connect(opts, { name: 'writer' })
  const observer = connect(opts, { name: 'observer' })
  await Promise.all([synced(writer), synced(observer)])
  for (const client of [writer, observer]) stopOnClose(client)

  const clocks = []
  const echoed = () => {
    const acked = writer.tap.clocks.get(writer.doc.clientID) ?? 0
    let n = 0
    while (n < clocks.length && clocks[n] <= acked) n++
    return n
  }
  let reported = 0
  const connected = () => writer.provider.wsconnected && observer.provider.wsconnected
  while (connected() && clocks.length < Number(opts.edits)) {
    const item = new Y.Map()
    item.set('id', `edit-${clocks.length}`)
    item.set('day', clocks.length % 7)
    writer.types.itinerary.push([item])
    clocks.push(ownClock(writer))
    if (echoed() > reported) {
      reported = echoed()
      process.stdout.write(JSON.stringify({ echoed: reported }) + '\n')
    }
    await sleep(Number(opts['interval-ms']))
  }
  await waitFor(() => !connected(), 'the server to go away')
  const ids = (n) => Array.from({ length: n }, (_, i) => `edit-${i}`)
  return {
    written: clocks.length,
    echoed: ids(echoed()),
    observed: observer.types.itinerary.toJSON().map((i) => i.id)
  }
})
