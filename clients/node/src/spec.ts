/**
 * Field specs: each model the client reads is declared once here, as data. The TypeScript types are
 * derived from the specs (`Infer`), and the specs are exported (`reads`) so a contract test can check
 * every field the client reads against the service's `/openapi.json`.
 */

/** A decimal amount exactly as the service sends it, e.g. "0.037". Never parsed into a float here. */
export type DecimalString = string;

export type Kind = "object" | "array" | "map" | "decimal" | "timestamp" | "string" | "integer" | "boolean" | "json";

export interface Spec<T = unknown> {
  readonly kind: Kind;
  readonly nullable: boolean;
  readonly optional?: boolean;
  readonly enum?: readonly string[];
  readonly name?: string;
  readonly fields?: Readonly<Record<string, Spec>>;
  readonly items?: Spec;
  readonly values?: Spec;
  /** Type-level only: the TypeScript type this spec reads. */
  readonly __type?: T;
}

export type Infer<S> = S extends Spec<infer T> ? T : never;

export interface ModelSpec<F extends Record<string, Spec>> extends Spec<{ [K in keyof F]: Infer<F[K]> }> {
  readonly fields: F;
}

const leaf = <T>(kind: Kind): Spec<T> => ({ kind, nullable: false });

export const decimal = leaf<DecimalString>("decimal");
export const text = leaf<string>("string");
/** ISO 8601 UTC, as sent. */
export const timestamp = leaf<string>("timestamp");
export const integer = leaf<number>("integer");
export const boolean = leaf<boolean>("boolean");
export const json = leaf<Record<string, unknown>>("json");

export function oneOf<const V extends readonly string[]>(...values: V): Spec<V[number]> {
  return { kind: "string", nullable: false, enum: values };
}

export function nullable<T>(spec: Spec<T>): Spec<T | null> {
  return { ...spec, nullable: true } as Spec<T | null>;
}

/** May be absent from the answer (then undefined). */
export function optional<T>(spec: Spec<T>): Spec<T | undefined> {
  return { ...spec, optional: true } as Spec<T | undefined>;
}

export function list<T>(items: Spec<T>): Spec<T[]> {
  return { kind: "array", nullable: false, items };
}

export function map<T>(values: Spec<T>): Spec<Record<string, T>> {
  return { kind: "map", nullable: false, values };
}

export function model<F extends Record<string, Spec>>(name: string, fields: F): ModelSpec<F> {
  return { kind: "object", nullable: false, name, fields };
}
