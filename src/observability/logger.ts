import pino from 'pino';

export type Logger = pino.Logger;

/** Paths whose values are never written to logs, wherever they appear. */
export const REDACT_PATHS = [
  'privateKeyPem',
  '*.privateKeyPem',
  'private_key',
  '*.private_key',
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
];

export function createLogger(opts: { level?: string; name?: string } = {}): Logger {
  return pino({
    name: opts.name ?? 'signalbox',
    level: opts.level ?? process.env.SIGNALBOX_LOG_LEVEL ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
  });
}
