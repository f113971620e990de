// Deep freezing, for values that caches key by identity: a frozen value cannot change, so the
// same object always stands for the same content, and whatever was computed from it still holds.
// A change attempted on one throws (ES modules are strict code) instead of going unseen.

/**
 * Freezes `value` and everything reachable from it; returns it. Already frozen parts are not walked
 * again (only this function freezes such values here); byte arrays cannot be frozen and are left.
 */
export function deepFreeze<T>(value: T): T {
  if (value === null || typeof value !== 'object' || Object.isFrozen(value) || ArrayBuffer.isView(value)) return value;
  Object.freeze(value);
  for (const v of Object.values(value as object)) deepFreeze(v);
  return value;
}
