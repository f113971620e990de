// A gateway proxy that NACKs, run in a worker thread by bounded.test.ts: building, encoding and
// encrypting a 4 MB request (or a burst of 1,000) then costs the worker's event loop, not the
// server's, so the /healthz round trips the test measures show only what the server spends.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { signTokenSync, subjectOf, xdsCa } from '../helpers/credentials.js';
import { AdsClient, gatewayNode } from '../helpers/xds-client.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';

export interface SenderData {
  target: string;
  dataDir: string;
  id: string;
  /** 'big': one NACK with bigMessage(); else `count` NACKs with `message`. */
  kind: 'big' | 'burst';
  message?: string;
  count?: number;
}

export type SenderReply = { ready: true } | { sent: true } | { eds: number } | { error: string };

/** A message of about 4 MB full of distinct quoted values (what froze the server), after a real one. */
export function bigMessage(): string {
  const parts = ["route rejected: prefix '/status' is not accepted;"];
  let size = parts[0]!.length;
  for (let i = 0; size < 4 << 20; i++) {
    const p = ` value 'fragment-${i}-not-in-any-resource' rejected;`;
    parts.push(p);
    size += p.length;
  }
  return parts.join('');
}

async function run(data: SenderData, port: NonNullable<typeof parentPort>): Promise<void> {
  const node = gatewayNode(data.id, 'edge');
  const ads = new AdsClient(data.target, {}, { ca: xdsCa(data.dataDir), token: (n) => signTokenSync(data.dataDir, subjectOf(n)!) });
  const s = ads.sotw({ node, follow: true });
  s.request(TypeUrl.Listener);
  s.ack(await s.nextOf(TypeUrl.Listener)); // following the listeners asks for their routes
  const rds = await s.nextOf(TypeUrl.Route);
  const message = data.kind === 'big' ? bigMessage() : data.message!;
  const count = data.kind === 'big' ? 1 : data.count!;
  port.on('message', (m: string) => {
    if (m === 'go') {
      for (let i = 0; i < count; i++) s.nack(rds, message);
      port.postMessage({ sent: true } satisfies SenderReply);
    } else if (m === 'probe') {
      s.request(TypeUrl.Endpoint, ['orders']);
      void s.nextOf(TypeUrl.Endpoint).then(
        (r) => port.postMessage({ eds: r.resources.length } satisfies SenderReply),
        (e: Error) => port.postMessage({ error: e.message } satisfies SenderReply),
      );
    } else if (m === 'close') {
      ads.close();
      port.close();
    }
  });
  port.postMessage({ ready: true } satisfies SenderReply);
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  run(workerData as SenderData, port).catch((e: Error) => port.postMessage({ error: e.message } satisfies SenderReply));
}
