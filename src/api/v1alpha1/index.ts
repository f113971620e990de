// The kinds of signalbox.dev/v1alpha1 this version of Signalbox understands and enforces.
import type { z } from 'zod';
import { Gateway } from './gateway.js';
import { HTTPRoute } from './httproute.js';
import { Mesh } from './mesh.js';
import { Service } from './service.js';
import { AccessPolicy } from './accesspolicy.js';
import { RateLimitPolicy } from './ratelimitpolicy.js';
import { TrafficPolicy } from './trafficpolicy.js';
import { JWTPolicy } from './jwtpolicy.js';

export { API_VERSION, parseDuration } from './common.js';
export type { Gateway } from './gateway.js';
export type { HTTPRoute, RouteRule, RouteMatch, RouteFilter } from './httproute.js';
export type { Mesh } from './mesh.js';
export type { Service } from './service.js';
export type { AccessPolicy } from './accesspolicy.js';
export type { RateLimitPolicy } from './ratelimitpolicy.js';
export type { TrafficPolicy } from './trafficpolicy.js';
export type { JWTPolicy } from './jwtpolicy.js';

export const KINDS = { Mesh, Service, Gateway, HTTPRoute, AccessPolicy, TrafficPolicy, RateLimitPolicy, JWTPolicy } as const satisfies Record<
  string,
  z.ZodType
>;
export type Kind = keyof typeof KINDS;

/** Kinds described by the policy language that this build does not enforce yet. Accepting them
 * silently would let a user believe a security or resilience policy is in force when it is not. */
export const PLANNED_KINDS: readonly string[] = [];

export type PolicyMap = { [K in Kind]: z.infer<(typeof KINDS)[K]> };
