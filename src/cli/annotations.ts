// GitHub Actions workflow commands for `signalbox validate --format github`: one `::error` line per
// problem, which Actions shows on the file and line of the pull request. Written here because the
// format is two escaping rules and a line (GitHub's @actions/core does it, but pulls in an HTTP
// client and Actions' runtime for what is a dozen lines).
import type { PolicyError } from '../errors.js';

/** A message: %, CR and LF are escaped (GitHub's rules for the data of a command). */
function escapeData(s: string): string {
  return s.replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}

/** A property value (file, title): also ':' and ',', which separate properties. */
function escapeProperty(s: string): string {
  return escapeData(s).replace(/:/g, '%3A').replace(/,/g, '%2C');
}

/**
 * `::error file=F,line=N,title=CODE::DOC PATH: MESSAGE`. The file is as the error names it
 * (relative to the working directory, which in a workflow is the repository's root); the line is
 * left out when the error has none (a file that cannot be read, a directory-wide limit).
 * `level` 'warning' writes `::warning` (a document skipped as not Signalbox's).
 */
export function githubAnnotation(e: PolicyError, level: 'error' | 'warning' = 'error'): string {
  const props = [`file=${escapeProperty(e.file)}`];
  if (e.line !== undefined) props.push(`line=${e.line}`);
  props.push(`title=${escapeProperty(e.code)}`);
  const where = [e.doc !== undefined ? `document ${e.doc}` : '', e.path ?? ''].filter(Boolean).join(' ');
  return `::${level} ${props.join(',')}::${escapeData(`${where ? `${where}: ` : ''}${e.message}`)}`;
}
